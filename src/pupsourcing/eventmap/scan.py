"""Read the input directory's source with :mod:`ast` and build the :class:`Model`.

Nothing the user wrote is imported or executed: names are resolved by reading
the ``import`` statements and class definitions of the modules in the input
directory, so generating a mapping has no side effects and works even when the
user's modules cannot be imported in the generator's environment.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pupsourcing.eventmap.errors import GenerationError
from pupsourcing.eventmap.model import (
    ClassRef,
    DataClassInfo,
    DataType,
    DictType,
    EnumInfo,
    EnumType,
    EventInfo,
    Field,
    FieldType,
    ListType,
    Model,
    OptionalType,
    Scalar,
    ScalarKind,
    TupleType,
)

VERSION_DIR = re.compile(r"v([0-9]+)")
SUPPORTED = (
    "str, int, float, bool, bytes, datetime, date, UUID, Decimal, enums and dataclasses "
    "from the input directory, X | None, list[X], tuple[X, ...], dict[str, X]"
)

_EXTERNAL_SCALARS: dict[tuple[str, str], ScalarKind] = {
    ("datetime", "datetime"): "datetime",
    ("datetime", "date"): "date",
    ("uuid", "UUID"): "uuid",
    ("decimal", "Decimal"): "decimal",
}
_BUILTIN_SCALARS: dict[str, ScalarKind] = {
    "str": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "bytes": "bytes",
}
_BUILTIN_NAMES = frozenset(
    {*_BUILTIN_SCALARS, "list", "tuple", "dict", "set", "frozenset", "object", "type", "complex"}
)
_TYPING_MODULES = frozenset({"typing", "typing_extensions"})
_ENUM_BASES = frozenset({"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag"})
_HARMLESS_BASES = frozenset({("abc", "ABC"), ("builtins", "object")})


# --- symbols: what a name in a module refers to -----------------------------------------


@dataclass(frozen=True)
class _ModuleSym:
    name: str


@dataclass(frozen=True)
class _ClassSym:
    module: _Module
    node: ast.ClassDef


@dataclass(frozen=True)
class _ExternalSym:
    """A name from a module outside the input directory (``datetime.datetime``)."""

    module: str
    name: str


@dataclass(frozen=True)
class _BuiltinSym:
    name: str


@dataclass(frozen=True)
class _UnknownSym:
    why: str


_Symbol = _ModuleSym | _ClassSym | _ExternalSym | _BuiltinSym | _UnknownSym


@dataclass(frozen=True)
class _Import:
    module: str  # absolute module name (relative imports resolved)
    name: str | None  # None for ``import module``


@dataclass(eq=False)
class _Module:
    name: str  # dotted
    display: str  # path as shown in messages
    is_package: bool
    version: int | None
    tree: ast.Module
    bindings: dict[str, ast.ClassDef | _Import | int] = field(default_factory=dict)

    def __hash__(self) -> int:
        return id(self)


@dataclass
class _Context:
    """Where a type annotation was found, for error messages."""

    module: _Module
    cls: str
    field: str
    line: int

    def error(self, message: str) -> GenerationError:
        return GenerationError(
            f"{self.module.display}:{self.line}: class {self.cls}, field {self.field}: {message}"
        )


# --- discovery -------------------------------------------------------------------------


def infer_package(input_dir: Path) -> str:
    """The dotted import name of ``input_dir``, from the ``__init__.py`` files above it."""
    directory = input_dir.resolve()
    parts: list[str] = []
    while (directory / "__init__.py").is_file():
        parts.append(directory.name)
        directory = directory.parent
    if not parts:
        raise GenerationError(
            f"{input_dir}: cannot tell the import name of the input directory (it has no "
            "__init__.py); pass --package, e.g. --package myapp.events"
        )
    return ".".join(reversed(parts))


def _is_test_file(name: str) -> bool:
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def _source_files(input_dir: Path) -> Iterator[tuple[tuple[str, ...], Path]]:
    """Every Python file under ``input_dir`` as (relative parts, path), in sorted order."""
    for root, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if d.isidentifier() and not d.startswith("."))
        rel = Path(root).relative_to(input_dir).parts
        for name in sorted(files):
            if name.endswith(".py") and not _is_test_file(name):
                yield (*rel, name), Path(root, name)


def _check_version_dirs(input_dir: Path) -> list[int]:
    versions: list[int] = []
    for entry in sorted(input_dir.iterdir()):
        match = VERSION_DIR.fullmatch(entry.name)
        if not match or not entry.is_dir():
            continue
        digits = match.group(1)
        if digits.startswith("0"):
            raise GenerationError(
                f"{entry}: version folders are named v1, v2, ... (no v0, no leading zeros)"
            )
        versions.append(int(digits))
    return sorted(versions)


def _load_modules(input_dir: Path, package: str) -> dict[str, _Module]:
    modules: dict[str, _Module] = {}
    for rel, path in _source_files(input_dir):
        display = str(input_dir / Path(*rel))
        stem = rel[-1][:-3]
        version = None
        if len(rel) > 1 and (match := VERSION_DIR.fullmatch(rel[0])):
            version = int(match.group(1))
        if not stem.isidentifier():
            if version is not None:
                raise GenerationError(
                    f"{display}: {stem!r} is not a valid module name, so its events could "
                    "not be imported; rename the file"
                )
            continue
        is_package = stem == "__init__"
        parts = [package, *rel[:-1]] + ([] if is_package else [stem])
        name = ".".join(parts)
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source, filename=display)
        except SyntaxError as exc:
            raise GenerationError(f"{display}:{exc.lineno}: cannot parse: {exc.msg}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GenerationError(f"{display}: cannot read: {exc}") from None
        module = _Module(name, display, is_package, version, tree)
        _collect_bindings(module)
        modules[name] = module
    return modules


def _bound_names(target: ast.expr) -> Iterator[str]:
    """The names an assignment target binds (``x``, ``a, *b``; not ``x.y`` or ``x[0]``)."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _bound_names(element)
    elif isinstance(target, ast.Starred):
        yield from _bound_names(target.value)


def _resolve_relative(module: _Module, level: int, target: str | None) -> str | None:
    parts = module.name.split(".")
    if not module.is_package:
        parts = parts[:-1]
    if level - 1 > len(parts) - 1:
        return None
    base = parts[: len(parts) - (level - 1)]
    if target:
        base.append(target)
    return ".".join(base)


def _collect_bindings(module: _Module) -> None:
    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.ClassDef):
                module.bindings[node.name] = node
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        module.bindings[alias.asname] = _Import(alias.name, None)
                    else:
                        top = alias.name.split(".")[0]
                        module.bindings[top] = _Import(top, None)
            elif isinstance(node, ast.ImportFrom):
                source = (
                    node.module
                    if node.level == 0
                    else _resolve_relative(module, node.level, node.module)
                )
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    local = alias.asname or alias.name
                    if source is None:  # above the top-level package: never in the input
                        source = "." * node.level + (node.module or "")
                    module.bindings[local] = _Import(source, alias.name)
            elif isinstance(node, ast.If):  # TYPE_CHECKING, version checks: both branches
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):  # try: import ... except ImportError: ...
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                module.bindings[node.name] = node.lineno
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in _bound_names(target):
                        module.bindings[name] = node.lineno
            elif type(node).__name__ == "TypeAlias":  # ``type X = ...`` (Python 3.12+)
                alias_name = getattr(node, "name", None)
                if isinstance(alias_name, ast.Name):
                    module.bindings[alias_name.id] = node.lineno

    visit(module.tree.body)


# --- the scanner ------------------------------------------------------------------------


class Scanner:
    def __init__(self, input_dir: Path, package: str) -> None:
        self.input_dir = input_dir
        self.package = package
        self.modules = _load_modules(input_dir, package)
        # Every package of the input, including namespace packages without __init__.py.
        self.packages = {package} | {
            m.rsplit(".", i)[0] for m in self.modules for i in range(1, m.count(".") + 1)
        }
        self.packages = {p for p in self.packages if p == package or p.startswith(f"{package}.")}
        self.dataclasses: dict[ClassRef, DataClassInfo] = {}
        self.enums: dict[ClassRef, EnumInfo] = {}
        self._in_progress: set[ClassRef] = set()
        self._used_as_field: set[ClassRef] = set()

    # names and symbols

    def ref(self, sym: _ClassSym) -> ClassRef:
        return ClassRef(sym.module.name, sym.node.name, sym.module.version)

    def where(self, sym: _ClassSym) -> str:
        return f"{sym.module.display}:{sym.node.lineno}"

    def _module_sym(self, name: str) -> _Symbol | None:
        if name in self.modules or name in self.packages:
            return _ModuleSym(name)
        return None

    def lookup(self, module: _Module, name: str, seen: frozenset[str] = frozenset()) -> _Symbol:
        binding = module.bindings.get(name)
        if isinstance(binding, ast.ClassDef):
            return _ClassSym(module, binding)
        if isinstance(binding, _Import):
            if binding.name is None:
                return self._module_sym(binding.module) or _ExternalSym(binding.module, "")
            return self.attribute(_ModuleSym(binding.module), binding.name, seen)
        if isinstance(binding, int):
            return _UnknownSym(
                f"{name!r} is not a class ({module.display}:{binding} binds it some other "
                "way; type aliases are not supported)"
            )
        if name in _BUILTIN_NAMES:
            return _BuiltinSym(name)
        return _UnknownSym(f"{name!r} is not defined or imported in {module.display}")

    def attribute(self, base: _Symbol, attr: str, seen: frozenset[str] = frozenset()) -> _Symbol:
        if isinstance(base, _ModuleSym):
            sub = self._module_sym(f"{base.name}.{attr}")
            if sub is not None:
                return sub
            module = self.modules.get(base.name)
            if module is not None:
                key = f"{base.name}:{attr}"
                if key in seen:
                    return _UnknownSym(f"{attr!r} is imported in a cycle")
                return self.lookup(module, attr, seen | {key})
            if base.name in self.packages:
                return _UnknownSym(f"{base.name}.{attr} is not a module of the input directory")
            if base.name.startswith(f"{self.package}."):  # a typo in an import, say
                return _UnknownSym(f"there is no module {base.name} in the input directory")
            return _ExternalSym(base.name, attr)
        if isinstance(base, _ExternalSym):
            return _ExternalSym(f"{base.module}.{base.name}" if base.name else base.module, attr)
        return _UnknownSym(f"cannot resolve .{attr}")

    def resolve(self, module: _Module, expr: ast.expr) -> _Symbol:
        if isinstance(expr, ast.Name):
            return self.lookup(module, expr.id)
        if isinstance(expr, ast.Attribute):
            return self.attribute(self.resolve(module, expr.value), expr.attr)
        return _UnknownSym(f"{ast.unparse(expr)!r} is not a name")

    @staticmethod
    def is_external(sym: _Symbol, modules: frozenset[str], names: frozenset[str]) -> bool:
        return isinstance(sym, _ExternalSym) and sym.module in modules and sym.name in names

    # classes

    def dataclass_decorator(self, module: _Module, node: ast.ClassDef) -> ast.expr | None:
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            sym = self.resolve(module, target)
            if self.is_external(sym, frozenset({"dataclasses"}), frozenset({"dataclass"})):
                return decorator
        return None

    def enum_base(self, sym: _ClassSym, seen: frozenset[ClassRef] = frozenset()) -> str | None:
        """The enum base class (``Enum``, ``StrEnum``, ...) the class derives from, if any."""
        for base in sym.node.bases:
            base_sym = self.resolve(sym.module, base)
            if self.is_external(base_sym, frozenset({"enum"}), _ENUM_BASES):
                assert isinstance(base_sym, _ExternalSym)
                return base_sym.name
            if isinstance(base_sym, _ClassSym) and self.ref(base_sym) not in seen:
                found = self.enum_base(base_sym, seen | {self.ref(sym)})
                if found:
                    return found
        return None

    def classify(self, sym: _ClassSym, ctx: _Context) -> FieldType:
        ref = self.ref(sym)
        if self.enum_base(sym):
            self.enum_info(sym)
            return EnumType(ref)
        if self.dataclass_decorator(sym.module, sym.node) is not None:
            self._used_as_field.add(ref)
            self.dataclass_info(sym)
            return DataType(ref)
        raise ctx.error(
            f"unsupported type {sym.node.name!r} ({self.where(sym)} is neither a dataclass "
            f"nor an enum); supported: {SUPPORTED}"
        )

    def enum_info(self, sym: _ClassSym) -> EnumInfo:
        ref = self.ref(sym)
        if ref in self.enums:
            return self.enums[ref]
        where = self.where(sym)
        base = self.enum_base(sym) or "Enum"
        mixins = set()
        for base_expr in sym.node.bases:
            base_sym = self.resolve(sym.module, base_expr)
            if isinstance(base_sym, _BuiltinSym) and base_sym.name in ("str", "int"):
                mixins.add(base_sym.name)
        if base in ("StrEnum",):
            mixins.add("str")
        if base in ("IntEnum", "IntFlag"):
            mixins.add("int")
        custom_auto = any(
            isinstance(stmt, ast.FunctionDef) and stmt.name == "_generate_next_value_"
            for stmt in sym.node.body
        )
        kinds: set[str] = set()
        members = 0
        for stmt in sym.node.body:
            if not (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                continue
            member = stmt.targets[0].id
            if member.startswith("_") and member.endswith("_"):
                continue
            members += 1
            kind = self._enum_value_kind(sym.module, stmt.value, base, mixins, custom_auto)
            if kind is None:
                raise GenerationError(
                    f"{sym.module.display}:{stmt.lineno}: enum {sym.node.name}, member "
                    f"{member}: the value must be a str or int literal or auto(), so that it "
                    "round-trips through JSON"
                )
            kinds.add(kind)
        if members == 0:
            raise GenerationError(f"{where}: enum {sym.node.name} has no members")
        if len(kinds) > 1 or (mixins and kinds != mixins):
            raise GenerationError(
                f"{where}: enum {sym.node.name}: member values must be all str or all int "
                f"(matching its base class), got {' and '.join(sorted(kinds | mixins))}"
            )
        info = EnumInfo(ref, "str" if kinds == {"str"} else "int", where)
        self.enums[ref] = info
        return info

    def _enum_value_kind(
        self, module: _Module, value: ast.expr, base: str, mixins: set[str], custom_auto: bool
    ) -> Literal["str", "int"] | None:
        if isinstance(value, ast.Constant):
            if isinstance(value.value, str):
                return "str"
            if isinstance(value.value, int) and not isinstance(value.value, bool):
                return "int"
            return None
        if (
            isinstance(value, ast.UnaryOp)
            and isinstance(value.op, ast.USub)
            and isinstance(value.operand, ast.Constant)
            and type(value.operand.value) is int
        ):
            return "int"
        if isinstance(value, ast.Call) and not value.args and not value.keywords:
            sym = self.resolve(module, value.func)
            if self.is_external(sym, frozenset({"enum"}), frozenset({"auto"})):
                if custom_auto or (mixins == {"str"} and base != "StrEnum"):
                    return None
                return "str" if base == "StrEnum" else "int"
        return None

    def dataclass_info(self, sym: _ClassSym) -> DataClassInfo:
        ref = self.ref(sym)
        if ref in self.dataclasses:
            return self.dataclasses[ref]
        where = self.where(sym)
        if ref in self._in_progress:
            raise GenerationError(
                f"{where}: class {sym.node.name} contains itself; recursive dataclasses are "
                "not supported"
            )
        self._in_progress.add(ref)
        decorator = self.dataclass_decorator(sym.module, sym.node)
        if isinstance(decorator, ast.Call):
            for keyword in decorator.keywords:
                if keyword.arg == "init" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is True
                ):
                    raise GenerationError(
                        f"{where}: class {sym.node.name}: @dataclass(init=False) classes "
                        "cannot be rebuilt from a payload"
                    )
        fields: dict[str, Field] = {}
        for inherited in self._inherited_fields(sym):
            fields[inherited.name] = inherited
        for stmt in sym.node.body:
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            name = _mangle(sym.node.name, stmt.target.id)
            ctx = _Context(sym.module, sym.node.name, name, stmt.lineno)
            if self._is_special(sym.module, stmt.annotation, "ClassVar", "typing"):
                continue
            if self._is_special(sym.module, stmt.annotation, "KW_ONLY", "dataclasses"):
                continue
            if self._is_special(sym.module, stmt.annotation, "InitVar", "dataclasses"):
                raise ctx.error("InitVar fields are not stored, so they cannot round-trip")
            if not self._in_init(sym.module, stmt.value, ctx):
                fields.pop(name, None)
                continue
            fields[name] = Field(name, self.field_type(sym.module, stmt.annotation, ctx))
        info = DataClassInfo(ref, tuple(fields.values()), where)
        self._in_progress.discard(ref)
        self.dataclasses[ref] = info
        return info

    def _inherited_fields(self, sym: _ClassSym) -> tuple[Field, ...]:
        contributing: list[tuple[Field, ...]] = []
        for base in sym.node.bases:
            base_sym = self.resolve(sym.module, base)
            if isinstance(base_sym, _ClassSym):
                if self.dataclass_decorator(base_sym.module, base_sym.node) is not None:
                    fields = self.dataclass_info(base_sym).fields
                else:
                    fields = self._inherited_fields(base_sym)
                if fields:
                    contributing.append(fields)
            elif not self._harmless_base(base_sym):
                shown = ast.unparse(base)
                raise GenerationError(
                    f"{self.where(sym)}: class {sym.node.name}: base class {shown!r} is not "
                    "defined in the input directory, so its fields cannot be read"
                )
        if len(contributing) > 1:
            raise GenerationError(
                f"{self.where(sym)}: class {sym.node.name}: fields inherited from more than "
                "one dataclass base are not supported"
            )
        return contributing[0] if contributing else ()

    @staticmethod
    def _harmless_base(sym: _Symbol) -> bool:
        """Bases that add no dataclass fields: ``object``, ``ABC``, typing constructs."""
        if isinstance(sym, _BuiltinSym):
            return sym.name == "object"
        return isinstance(sym, _ExternalSym) and (
            (sym.module, sym.name) in _HARMLESS_BASES or sym.module in _TYPING_MODULES
        )

    def _is_special(self, module: _Module, annotation: ast.expr, name: str, home: str) -> bool:
        target = annotation.value if isinstance(annotation, ast.Subscript) else annotation
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            try:
                parsed = _parse_annotation(target.value)
            except SyntaxError:
                return False  # reported as a field type error
            return self._is_special(module, parsed, name, home)
        sym = self.resolve(module, target)
        homes = _TYPING_MODULES if home == "typing" else frozenset({home})
        return self.is_external(sym, homes, frozenset({name}))

    def _in_init(self, module: _Module, value: ast.expr | None, ctx: _Context) -> bool:
        """False for ``field(init=False)``: such fields are computed, not stored."""
        if not isinstance(value, ast.Call):
            return True
        sym = self.resolve(module, value.func)
        if not self.is_external(sym, frozenset({"dataclasses"}), frozenset({"field"})):
            return True
        for keyword in value.keywords:
            if keyword.arg == "init":
                if isinstance(keyword.value, ast.Constant) and isinstance(
                    keyword.value.value, bool
                ):
                    return keyword.value.value
                raise ctx.error("field(init=...) must be a literal True or False")
        return True

    # field types

    def field_type(self, module: _Module, expr: ast.expr, ctx: _Context) -> FieldType:
        result = self._type(module, expr, ctx)
        if result is None:
            raise ctx.error("a field cannot be just None")
        return result

    def _unsupported(self, expr: ast.expr, ctx: _Context, why: str = "") -> GenerationError:
        reason = f" ({why})" if why else ""
        return ctx.error(f"unsupported type {ast.unparse(expr)!r}{reason}; supported: {SUPPORTED}")

    def _type(self, module: _Module, expr: ast.expr, ctx: _Context) -> FieldType | None:
        """The field type of an annotation; ``None`` for the ``None`` in an optional."""
        if isinstance(expr, ast.Constant):
            if expr.value is None:
                return None
            if isinstance(expr.value, str):
                try:
                    parsed = _parse_annotation(expr.value)
                except SyntaxError:
                    raise ctx.error(f"cannot parse the annotation {expr.value!r}") from None
                return self._type(module, parsed, ctx)
            raise self._unsupported(expr, ctx)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
            return self._union(module, expr, _flatten_union(expr), ctx)
        if isinstance(expr, ast.Subscript):
            return self._generic(module, expr, ctx)
        sym = self.resolve(module, expr)
        if isinstance(sym, _BuiltinSym):
            if sym.name in _BUILTIN_SCALARS:
                return Scalar(_BUILTIN_SCALARS[sym.name])
            if sym.name in ("list", "tuple", "dict"):
                raise self._unsupported(expr, ctx, f"say what {sym.name} holds")
            raise self._unsupported(expr, ctx)
        if isinstance(sym, _ExternalSym):
            kind = _EXTERNAL_SCALARS.get((sym.module, sym.name))
            if kind is not None:
                return Scalar(kind)
            if sym.module in _TYPING_MODULES and sym.name in ("List", "Tuple", "Dict"):
                raise self._unsupported(expr, ctx, "say what it holds")
            if sym.module in ("typing", "typing_extensions", "builtins", "datetime", "uuid"):
                raise self._unsupported(expr, ctx)
            raise self._unsupported(
                expr, ctx, f"{sym.module}.{sym.name} is outside the input directory"
            )
        if isinstance(sym, _ClassSym):
            return self.classify(sym, ctx)
        if isinstance(sym, _UnknownSym):
            raise self._unsupported(expr, ctx, sym.why)
        raise self._unsupported(expr, ctx)

    def _union(
        self, module: _Module, expr: ast.expr, members: list[ast.expr], ctx: _Context
    ) -> FieldType:
        types = [self._type(module, member, ctx) for member in members]
        present = [t for t in types if t is not None]
        if len(present) != 1:
            raise self._unsupported(
                expr, ctx, "a union of several types cannot be told apart in JSON"
            )
        inner = present[0]
        if len(present) == len(types):
            return inner
        return inner if isinstance(inner, OptionalType) else OptionalType(inner)

    def _generic(self, module: _Module, expr: ast.Subscript, ctx: _Context) -> FieldType:
        origin = self.resolve(module, expr.value)
        args = list(expr.slice.elts) if isinstance(expr.slice, ast.Tuple) else [expr.slice]
        name = ""
        if isinstance(origin, _BuiltinSym):
            name = origin.name
        elif isinstance(origin, _ExternalSym) and origin.module in _TYPING_MODULES:
            name = {"List": "list", "Tuple": "tuple", "Dict": "dict"}.get(origin.name, origin.name)
        if name == "Annotated" and args:
            return self.field_type(module, args[0], ctx)
        if name == "Optional" and len(args) == 1:
            return self._union(module, expr, [args[0], ast.Constant(None)], ctx)
        if name == "Union":
            return self._union(module, expr, args, ctx)
        if name == "list" and len(args) == 1:
            return ListType(self.field_type(module, args[0], ctx))
        if name == "tuple":
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return TupleType(self.field_type(module, args[0], ctx))
            raise self._unsupported(expr, ctx, "use tuple[X, ...]; fixed-size tuples are not")
        if name == "dict" and len(args) == 2:
            key = self._type(module, args[0], ctx)
            if key != Scalar("str"):
                raise self._unsupported(expr, ctx, "JSON object keys are strings: use dict[str, X]")
            return DictType(self.field_type(module, args[1], ctx))
        raise self._unsupported(expr, ctx)

    # events

    def scan(self, versions: list[int]) -> Model:
        candidates: list[_ClassSym] = []
        for module in self.modules.values():
            if module.version is None:
                continue
            for stmt in module.tree.body:
                if (
                    isinstance(stmt, ast.ClassDef)
                    and not stmt.name.startswith("_")
                    and self.dataclass_decorator(module, stmt) is not None
                ):
                    candidates.append(_ClassSym(module, stmt))
        for sym in candidates:
            self.dataclass_info(sym)
        events: dict[tuple[str, int], tuple[EventInfo, str]] = {}
        for sym in candidates:
            ref = self.ref(sym)
            if ref in self._used_as_field:
                continue
            assert ref.version is not None
            key = (ref.name, ref.version)
            if key in events:
                raise GenerationError(
                    f"{self.where(sym)}: event {ref.name} is defined twice in v{ref.version} "
                    f"(also at {events[key][1]}); an event type and version must be unique"
                )
            events[key] = (EventInfo(ref, ref.version), self.where(sym))
        if not events:
            folders = ", ".join(f"v{v}/" for v in versions)
            raise GenerationError(
                f"{self.input_dir}: no events found: no public dataclass is defined in the "
                f"modules of {folders}"
            )
        used = self._reachable({info.ref for info, _ in events.values()})
        used_enums = self._enum_refs(used)
        return Model(
            package=self.package,
            events=tuple(info for _, (info, _) in sorted(events.items())),
            dataclasses={ref: self.dataclasses[ref] for ref in sorted(used)},
            enums={ref: self.enums[ref] for ref in sorted(used_enums)},
            versions=tuple(versions),
        )

    def _reachable(self, roots: set[ClassRef]) -> set[ClassRef]:
        seen: set[ClassRef] = set()
        stack = list(roots)
        while stack:
            ref = stack.pop()
            if ref in seen:
                continue
            seen.add(ref)
            for f in self.dataclasses[ref].fields:
                stack.extend(t.ref for t in _walk(f.type) if isinstance(t, DataType))
        return seen

    def _enum_refs(self, dataclasses: set[ClassRef]) -> set[ClassRef]:
        return {
            t.ref
            for ref in dataclasses
            for f in self.dataclasses[ref].fields
            for t in _walk(f.type)
            if isinstance(t, EnumType)
        }


def _walk(t: FieldType) -> Iterator[FieldType]:
    yield t
    if isinstance(t, ListType | TupleType):
        yield from _walk(t.item)
    elif isinstance(t, DictType):
        yield from _walk(t.value)
    elif isinstance(t, OptionalType):
        yield from _walk(t.inner)


def _flatten_union(expr: ast.expr) -> list[ast.expr]:
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _flatten_union(expr.left) + _flatten_union(expr.right)
    return [expr]


def _mangle(cls: str, name: str) -> str:
    """The name Python gives ``__name`` in the body of class ``cls`` (``_Cls__name``)."""
    if not name.startswith("__") or name.endswith("__") or not cls.strip("_"):
        return name
    return f"_{cls.lstrip('_')}{name}"


def _parse_annotation(text: str) -> ast.expr:
    return ast.parse(text.strip(), mode="eval").body


def scan(input_dir: Path, package: str | None = None) -> Model:
    """Read ``input_dir`` (version folders ``v1/``, ``v2/``, ...) and return its model."""
    if input_dir.exists() and not input_dir.is_dir():
        raise GenerationError(f"{input_dir}: the input is a file, not a directory")
    if not input_dir.is_dir():
        raise GenerationError(f"{input_dir}: the input directory does not exist")
    if package is None:
        package = infer_package(input_dir)
    elif not all(part.isidentifier() for part in package.split(".")):
        raise GenerationError(f"--package {package!r} is not a dotted module name")
    versions = _check_version_dirs(input_dir)
    if not versions:
        raise GenerationError(
            f"{input_dir}: no version folders (v1/, v2/, ...) in the input directory"
        )
    return Scanner(input_dir, package).scan(versions)
