"""Version 2 events; the package re-exports the shared currency."""

from eventmap_fixtures.kitchen_sink.common import Currency as Currency
