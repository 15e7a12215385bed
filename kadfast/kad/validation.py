"""Record validation for the DHT's value store (PUT_VALUE / GET_VALUE).

A record key is namespaced: ``b"/<namespace>/<rest>"``. A validator decides
whether a value may be stored under a key (:meth:`Validator.validate`) and
which of several values found for a key is the best
(:meth:`Validator.select`), following go-libp2p-record.

Two namespaces are validated by default, as the IPFS DHT spec requires
(``src/routing/kad-dht.md``: servers MUST validate ``/pk/`` and ``/ipns/``):

* ``pk``: as go-libp2p-record's ``PublicKeyValidator`` does (the value is
  the public key whose PeerId is in the key);
* ``ipns``: IPNS records (:mod:`kadfast.ipns`): at most 10 KiB, a valid
  ``signatureV2`` by the name's key, V1 fields (if any) equal to the signed
  data, validity type EOL and not expired on the validator's wall clock.
  The best of several is the one with the highest sequence, then the
  latest validity, then the greatest bytes (boxo's ``ipns.Validator``).

The node uses :meth:`Validator.select` beyond GET: a PUT_VALUE whose record
loses against the one held is refused, and a lookup sends its best record
to the peers that answered with a worse one (go-libp2p-kad-dht does both).

One deliberate difference from go: :class:`NamespacedValidator` ACCEPTS a
key whose namespace has no validator (rust-libp2p stores records without
validating them; go refuses them).
"""

from __future__ import annotations

import abc
import time
from typing import Callable

from .. import ipns
from ..errors import CryptoKeyError, InvalidRecord, PeerIdError
from ..keys import PublicKey
from ..peerid import PeerId

__all__ = [
    "InvalidRecord",
    "Validator",
    "PublicKeyValidator",
    "IpnsValidator",
    "AcceptAllValidator",
    "NamespacedValidator",
    "split_key",
]


def split_key(key: bytes) -> tuple[str, bytes] | None:
    """``(namespace, rest)`` of a key shaped ``b"/ns/rest"`` (``rest`` may be
    empty), or None when the key has no namespace (go's ``SplitKey``) or the
    namespace is not UTF-8."""
    if not key or key[0] != 0x2F:  # "/"
        return None
    i = key.find(b"/", 1)
    if i <= 1:
        return None
    try:
        return key[1:i].decode(), key[i + 1:]
    except UnicodeDecodeError:
        return None


class Validator(abc.ABC):
    """Decides which records are valid, and which of several is the best."""

    @abc.abstractmethod
    def validate(self, key: bytes, value: bytes) -> None:
        """Raise :class:`InvalidRecord` when ``value`` may not be stored under ``key``."""

    def select(self, key: bytes, values: list[bytes]) -> int:
        """Index of the best of ``values`` (all valid); the first by default.
        Raises :class:`InvalidRecord` for an empty list."""
        if not values:
            raise InvalidRecord("no values to select from")
        return 0


class AcceptAllValidator(Validator):
    """Accepts every record; selects the first value."""

    def validate(self, key: bytes, value: bytes) -> None:
        return None


class PublicKeyValidator(Validator):
    """The ``/pk/`` namespace: the key is ``b"/pk/" + PeerId bytes`` (a
    multihash) and the value a ``PublicKey`` protobuf whose PeerId is that
    multihash. All valid values are the same key, so select returns 0."""

    def validate(self, key: bytes, value: bytes) -> None:
        parts = split_key(key)
        if parts is None or parts[0] != "pk":
            raise InvalidRecord("key is not in the /pk/ namespace")
        try:
            peer_id = PeerId(parts[1])
        except PeerIdError as exc:
            raise InvalidRecord(f"/pk/ key does not hold a PeerId multihash: {exc}") from None
        try:
            public_key = PublicKey.decode(value)
        except (CryptoKeyError, ValueError) as exc:
            raise InvalidRecord(f"/pk/ value is not a public key: {exc}") from None
        if not peer_id.matches_public_key(public_key):
            raise InvalidRecord("public key does not match the PeerId in the key")


class IpnsValidator(Validator):
    """The ``/ipns/`` namespace: the key is ``b"/ipns/" + PeerId bytes`` and
    the value an IPNS record of that name, verified as the IPNS record spec
    says (:func:`kadfast.ipns.verify_record`) at the time ``wall_clock()``
    gives (seconds since the epoch). :meth:`select` picks the highest
    sequence, then the latest validity, then the greatest bytes; a value
    that does not parse loses against every one that does."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.wall_clock = wall_clock

    def validate(self, key: bytes, value: bytes) -> None:
        try:
            name = ipns.name_from_routing_key(key)
            ipns.verify_record(name, value, self.wall_clock())
        except ipns.IpnsError as exc:
            raise InvalidRecord(f"invalid IPNS record: {exc}") from None

    def select(self, key: bytes, values: list[bytes]) -> int:
        if not values:
            raise InvalidRecord("no values to select from")
        return ipns.select_best(values)


class NamespacedValidator(Validator):
    """Dispatches on the key's namespace. ``pk`` and ``ipns`` are registered
    by default (the latter reading ``wall_clock``); ``validators`` adds to
    (or replaces) them. Keys of an unregistered namespace, and keys with
    none, are accepted (rust-libp2p semantics)."""

    def __init__(self, validators: dict[str, Validator] | None = None, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._validators: dict[str, Validator] = {
            "pk": PublicKeyValidator(),
            "ipns": IpnsValidator(wall_clock),
        }
        for namespace, validator in (validators or {}).items():
            self.register(namespace, validator)

    def register(self, namespace: str, validator: Validator) -> None:
        if not namespace or "/" in namespace:
            raise ValueError(f"invalid record namespace {namespace!r}")
        if not isinstance(validator, Validator):
            raise TypeError("validator must be a Validator")
        self._validators[namespace] = validator

    @staticmethod
    def namespace_of(key: bytes) -> str | None:
        """The namespace of a key shaped ``b"/ns/rest"``, else None."""
        parts = split_key(key)
        return None if parts is None else parts[0]

    def validator_for(self, key: bytes) -> Validator | None:
        """The registered validator of the key's namespace, if any."""
        namespace = self.namespace_of(key)
        return None if namespace is None else self._validators.get(namespace)

    def validate(self, key: bytes, value: bytes) -> None:
        validator = self.validator_for(key)
        if validator is not None:
            validator.validate(key, value)

    def select(self, key: bytes, values: list[bytes]) -> int:
        if not values:
            raise InvalidRecord("no values to select from")
        if len(values) == 1:
            return 0
        validator = self.validator_for(key)
        if validator is None:
            return 0
        index = validator.select(key, values)
        if not 0 <= index < len(values):
            raise InvalidRecord(f"validator selected index {index} of {len(values)} values")
        return index
