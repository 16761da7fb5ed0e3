"""Publishing the store to NATS JetStream (extra ``nats``, nats-py).

>>> from pupsourcing.relay import NatsRelay, subject_for

:class:`NatsRelay` publishes every event, in global-position order, to a
JetStream stream, once; :func:`subject_for` gives an event's subject. It
stops with :class:`MessageTooLarge` before an event the server or the
stream would refuse, and with :class:`StreamGap` when JetStream refused one
but stored later ones (also when a relay started afterwards finds it
missing). The
command ``pupsourcing relay nats`` runs a relay. Importing this package
imports no NATS client; the relay imports nats-py when it connects.
"""

from pupsourcing.relay._link import MessageTooLarge, StreamGap
from pupsourcing.relay._relay import NatsRelay
from pupsourcing.relay._subject import subject_for

__all__ = ["MessageTooLarge", "NatsRelay", "StreamGap", "subject_for"]
