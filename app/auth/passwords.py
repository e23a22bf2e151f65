"""Passwords of local accounts, hashed with argon2id (RFC 9106).

``argon2-cffi``'s defaults are RFC 9106's second recommended parameter set (3 passes
over 64 MiB, 4 lanes): about 0.2 s of one core on the reference machine, memory-hard so
that a stolen table is expensive to attack with GPUs. Hashes are PHC strings that carry
their parameters, so raising them later only needs :func:`needs_rehash` at the next
sign-in.

Hashing runs in a thread (the event loop never waits on it) and at most
:data:`CONCURRENT` at a time per process: a burst of sign-ins costs at most
``CONCURRENT`` x 64 MiB, and queues instead of exhausting memory.

An unknown or disabled account is verified against a throw-away hash, so the answer
takes as long as for a real one and the timing tells nobody which names exist.
"""

from __future__ import annotations

import asyncio
import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: NIST SP 800-63B 5.1.1.2: at least 8 characters, and accept at least 64
MIN_LENGTH = 8
MAX_LENGTH = 256
CONCURRENT = 2

_hasher = PasswordHasher()
_slots: asyncio.Semaphore | None = None


class PasswordError(ValueError):
    """A password that cannot be set; the message says why."""


def check_new(password: str) -> str:
    """``password`` if it may be set, else :class:`PasswordError`."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"a password has at most {MAX_LENGTH} characters")
    if password.strip() != password or any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise PasswordError("a password has no control characters and no leading or trailing space")
    return password


def hash_now(password: str) -> str:
    """The PHC string of ``password`` (blocking: a command line, or a thread)."""
    return _hasher.hash(check_new(password))


def verify_now(phc: str, password: str) -> bool:
    try:
        return _hasher.verify(phc, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(phc: str) -> bool:
    return _hasher.check_needs_rehash(phc)


@functools.cache
def _decoy() -> str:
    return _hasher.hash(secrets.token_urlsafe(24))


def _gate() -> asyncio.Semaphore:
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(CONCURRENT)
    return _slots


async def hash_password(password: str) -> str:
    async with _gate():
        return await asyncio.to_thread(hash_now, password)


async def verify(phc: str | None, password: str) -> bool:
    """Whether ``password`` matches ``phc``; with no hash (no such account), the same
    work against a decoy and False. A password longer than :data:`MAX_LENGTH` never
    matches and is not hashed (its length bounds the work an attacker can ask for)."""
    if len(password) > MAX_LENGTH:
        return False
    async with _gate():
        if phc is None:
            await asyncio.to_thread(verify_now, _decoy(), password)
            return False
        return await asyncio.to_thread(verify_now, phc, password)
