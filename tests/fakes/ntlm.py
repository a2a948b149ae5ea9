"""The server side of NTLM over HTTP for the fake EWS server: messages, NTLMv2 check, per-connection state.

Message layouts, flags and AV pair ids follow [MS-NLMP] (NT LAN Manager
Authentication Protocol) sections 2.2.1 and 2.2.2. The server replies to a
NEGOTIATE_MESSAGE with a CHALLENGE_MESSAGE and accepts an
AUTHENTICATE_MESSAGE only when its NTLMv2 response proves the configured
password for the user and domain it names. NTLMv1 responses and anonymous
logons are rejected, as Exchange servers that require NTLMv2 reject them.
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
import time
from dataclasses import dataclass, field

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher

# OpenSSL 3 leaves MD4 out of hashlib, and NTOWFv2 needs it. pyspnego, which
# requests-ntlm uses on the client side, ships a pure-Python MD4.
from spnego._ntlm_raw.md4 import md4

SIGNATURE = b"NTLMSSP\0"


class MessageType(enum.IntEnum):
    NEGOTIATE = 1
    CHALLENGE = 2
    AUTHENTICATE = 3


class Flag(enum.IntFlag):
    """NegotiateFlags bits ([MS-NLMP] 2.2.2.5) that the fake reads or sets."""

    UNICODE = 0x00000001
    OEM = 0x00000002
    REQUEST_TARGET = 0x00000004
    SIGN = 0x00000010
    SEAL = 0x00000020
    NTLM = 0x00000200
    ANONYMOUS = 0x00000800
    ALWAYS_SIGN = 0x00008000
    TARGET_TYPE_DOMAIN = 0x00010000
    EXTENDED_SESSIONSECURITY = 0x00080000
    TARGET_INFO = 0x00800000
    VERSION = 0x02000000
    NEGOTIATE_128 = 0x20000000
    KEY_EXCH = 0x40000000
    NEGOTIATE_56 = 0x80000000


#: Client flags that the server echoes in its CHALLENGE_MESSAGE when the client requests them.
ECHOED_FLAGS = (
    Flag.UNICODE
    | Flag.SIGN
    | Flag.SEAL
    | Flag.ALWAYS_SIGN
    | Flag.EXTENDED_SESSIONSECURITY
    | Flag.VERSION
    | Flag.NEGOTIATE_128
    | Flag.KEY_EXCH
    | Flag.NEGOTIATE_56
)


class AvId(enum.IntEnum):
    """AV_PAIR ids ([MS-NLMP] 2.2.2.1) of the target info that the server sends."""

    EOL = 0
    NB_COMPUTER_NAME = 1
    NB_DOMAIN_NAME = 2
    DNS_COMPUTER_NAME = 3
    DNS_DOMAIN_NAME = 4
    DNS_TREE_NAME = 5
    FLAGS = 6
    TIMESTAMP = 7


#: MsvAvFlags bit that the client sets when its AUTHENTICATE_MESSAGE carries a MIC.
AV_FLAG_MIC_PRESENT = 0x00000002

#: Seconds between the FILETIME epoch (1601-01-01 UTC) and the Unix epoch.
FILETIME_EPOCH_OFFSET = 11_644_473_600

#: Offset of the MIC in an AUTHENTICATE_MESSAGE that carries a Version field.
MIC_OFFSET = 72

#: The Version field of the server: Windows Server 2019 (10.0 build 17763), NTLM revision 15.
SERVER_VERSION = struct.pack("<BBH3xB", 10, 0, 17763, 15)


class NtlmError(ValueError):
    """A token that is not a well-formed NTLM message of the expected type."""


@dataclass(frozen=True)
class ServerIdentity:
    """The names that the server puts into the target info of its CHALLENGE_MESSAGE."""

    netbios_domain: str = "SALG"
    netbios_computer: str = "EXCH01"
    dns_domain: str = "salg.example"
    dns_computer: str = "exch01.salg.example"


@dataclass(frozen=True)
class NegotiateMessage:
    flags: Flag
    raw: bytes


@dataclass(frozen=True)
class AuthenticateMessage:
    flags: Flag
    lm_response: bytes
    nt_response: bytes
    domain: str
    user: str
    workstation: str
    encrypted_session_key: bytes
    mic: bytes | None
    raw: bytes


@dataclass(frozen=True)
class NtlmAccount:
    """A service account the server accepts: the password of DOMAIN\\user, or of a UPN with an empty domain."""

    domain: str
    user: str
    password: str = field(repr=False)

    @classmethod
    def parse(cls, username: str, password: str) -> NtlmAccount:
        """Build an account from "DOMAIN\\user" or a UPN such as "svc-crm@salg.example"."""
        domain, separator, user = username.rpartition("\\")
        if not user or (separator and not domain):
            raise ValueError(f"NTLM username {username!r} is invalid; use DOMAIN\\user or a UPN")
        return cls(domain, user, password)

    def names(self, message: AuthenticateMessage) -> bool:
        """Return True when `message` logs on as this account."""
        return self._key() == (message.domain.casefold(), message.user.casefold())

    def same_account(self, other: NtlmAccount) -> bool:
        return self._key() == other._key()

    def _key(self) -> tuple[str, str]:
        # Windows compares account and domain names without regard to case.
        return self.domain.casefold(), self.user.casefold()


def message_type(token: bytes) -> MessageType:
    """Return the MessageType of an NTLM token, after checking its signature."""
    if len(token) < 12 or token[:8] != SIGNATURE:
        raise NtlmError(f"token of {len(token)} bytes is not an NTLM message (signature {token[:8]!r})")
    (value,) = struct.unpack_from("<I", token, 8)
    try:
        return MessageType(value)
    except ValueError:
        raise NtlmError(f"NTLM message type {value} is unknown; expected 1, 2 or 3") from None


def parse_negotiate(token: bytes) -> NegotiateMessage:
    """Read a NEGOTIATE_MESSAGE ([MS-NLMP] 2.2.1.1). Only the flags matter to this server."""
    _check_header(token, MessageType.NEGOTIATE, minimum_length=16)
    (flags,) = struct.unpack_from("<I", token, 12)
    return NegotiateMessage(Flag(flags), token)


def build_challenge(
    negotiate: NegotiateMessage, server_challenge: bytes, identity: ServerIdentity, now: float | None = None
) -> bytes:
    """Build the CHALLENGE_MESSAGE ([MS-NLMP] 2.2.1.2) that replies to `negotiate`.

    Text fields are UTF-16LE when the client requested Unicode, else OEM
    (ASCII names here). The target info always carries the NetBIOS and DNS
    names, a timestamp and the end-of-list pair, because NTLMv2 needs it.
    """
    if len(server_challenge) != 8:
        raise ValueError(f"server challenge must be 8 bytes, not {len(server_challenge)}")
    unicode = Flag.UNICODE in negotiate.flags
    flags = (negotiate.flags & ECHOED_FLAGS) | Flag.NTLM | Flag.TARGET_INFO
    flags |= Flag.UNICODE if unicode else Flag.OEM
    target_name = b""
    if Flag.REQUEST_TARGET in negotiate.flags:
        flags |= Flag.REQUEST_TARGET | Flag.TARGET_TYPE_DOMAIN
        target_name = _encode_text(identity.netbios_domain, unicode)
    target_info = _target_info(identity, time.time() if now is None else now)

    header_length = 56
    payload_offsets = (header_length, header_length + len(target_name))
    header = (
        SIGNATURE
        + struct.pack("<I", MessageType.CHALLENGE)
        + _fields(target_name, payload_offsets[0])
        + struct.pack("<I", flags)
        + server_challenge
        + bytes(8)
        + _fields(target_info, payload_offsets[1])
        + (SERVER_VERSION if Flag.VERSION in flags else bytes(8))
    )
    return header + target_name + target_info


def parse_authenticate(token: bytes) -> AuthenticateMessage:
    """Read an AUTHENTICATE_MESSAGE ([MS-NLMP] 2.2.1.3), with its names decoded and its MIC, if any."""
    _check_header(token, MessageType.AUTHENTICATE, minimum_length=64)
    (flags_value,) = struct.unpack_from("<I", token, 60)
    flags = Flag(flags_value)
    unicode = Flag.UNICODE in flags
    lm_response, nt_response, domain, user, workstation, session_key = (
        _field(token, offset) for offset in (12, 20, 28, 36, 44, 52)
    )
    payload_start = min(
        (struct.unpack_from("<I", token, offset + 4)[0] for offset in (12, 20, 28, 36, 44, 52)
         if struct.unpack_from("<H", token, offset)[0]),
        default=len(token),
    )
    # The MIC follows the Version field; a client that sends neither starts its payload at offset 64.
    mic = token[MIC_OFFSET:MIC_OFFSET + 16] if payload_start >= MIC_OFFSET + 16 else None
    return AuthenticateMessage(
        flags=flags,
        lm_response=lm_response,
        nt_response=nt_response,
        domain=_decode_text(domain, unicode),
        user=_decode_text(user, unicode),
        workstation=_decode_text(workstation, unicode),
        encrypted_session_key=session_key,
        mic=mic,
        raw=token,
    )


def ntowfv2(password: str, user: str, domain: str) -> bytes:
    """Compute NTOWFv2 ([MS-NLMP] 3.3.2): HMAC-MD5 of the upper-case user and the domain, keyed by the NT hash."""
    nt_hash = md4(password.encode("utf-16-le"))
    return hmac.digest(nt_hash, (user.upper() + domain).encode("utf-16-le"), "md5")


def verify_ntlmv2(
    message: AuthenticateMessage, password: str, server_challenge: bytes, negotiate: bytes, challenge: bytes
) -> bool:
    """Check the NTLMv2 response of `message` against `password`, and its MIC when the client sent one.

    The NT response is NTProofStr (16 bytes) followed by the client's blob
    (NTLMv2_CLIENT_CHALLENGE, [MS-NLMP] 2.2.2.7), and NTProofStr is the
    HMAC-MD5 of the server challenge and that blob, keyed by NTOWFv2.
    """
    # A 24-byte NT response is NTLMv1, and an empty one is an anonymous logon.
    if len(message.nt_response) < 48:
        return False
    proof, blob = message.nt_response[:16], message.nt_response[16:]
    if blob[:2] != b"\x01\x01":
        return False
    response_key = ntowfv2(password, message.user, message.domain)
    expected = hmac.digest(response_key, server_challenge + blob, "md5")
    if not hmac.compare_digest(proof, expected):
        return False
    if not _blob_announces_mic(blob[28:]):
        return True
    if message.mic is None:
        return False
    return _mic_matches(message, message.mic, response_key, proof, negotiate + challenge)


def _mic_matches(
    message: AuthenticateMessage, mic: bytes, response_key: bytes, proof: bytes, earlier_messages: bytes
) -> bool:
    # For NTLMv2 the key exchange key is the session base key ([MS-NLMP] 3.4.5.1).
    session_base_key = hmac.digest(response_key, proof, "md5")
    exported_session_key = session_base_key
    if Flag.KEY_EXCH in message.flags:
        if len(message.encrypted_session_key) != 16:
            return False
        decryptor = Cipher(ARC4(session_base_key), mode=None).decryptor()
        exported_session_key = decryptor.update(message.encrypted_session_key)
    # The client computed the MIC over its message with the MIC field still zero.
    zeroed = message.raw[:MIC_OFFSET] + bytes(16) + message.raw[MIC_OFFSET + 16:]
    expected = hmac.digest(exported_session_key, earlier_messages + zeroed, "md5")
    return hmac.compare_digest(mic, expected)


def _blob_announces_mic(av_pairs: bytes) -> bool:
    for av_id, value in _iter_av_pairs(av_pairs):
        if av_id == AvId.FLAGS and len(value) == 4:
            return bool(struct.unpack("<I", value)[0] & AV_FLAG_MIC_PRESENT)
    return False


def _iter_av_pairs(data: bytes) -> list[tuple[int, bytes]]:
    pairs = []
    offset = 0
    while offset + 4 <= len(data):
        av_id, length = struct.unpack_from("<HH", data, offset)
        if av_id == AvId.EOL:
            break
        pairs.append((av_id, data[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return pairs


def _target_info(identity: ServerIdentity, now: float) -> bytes:
    filetime = int((now + FILETIME_EPOCH_OFFSET) * 10_000_000)
    pairs = [
        (AvId.NB_DOMAIN_NAME, identity.netbios_domain.encode("utf-16-le")),
        (AvId.NB_COMPUTER_NAME, identity.netbios_computer.encode("utf-16-le")),
        (AvId.DNS_DOMAIN_NAME, identity.dns_domain.encode("utf-16-le")),
        (AvId.DNS_COMPUTER_NAME, identity.dns_computer.encode("utf-16-le")),
        (AvId.DNS_TREE_NAME, identity.dns_domain.encode("utf-16-le")),
        (AvId.TIMESTAMP, struct.pack("<Q", filetime)),
        (AvId.EOL, b""),
    ]
    return b"".join(struct.pack("<HH", av_id, len(value)) + value for av_id, value in pairs)


def _check_header(token: bytes, expected: MessageType, minimum_length: int) -> None:
    found = message_type(token)
    if found != expected:
        raise NtlmError(f"expected NTLM message type {int(expected)}, got {int(found)}")
    if len(token) < minimum_length:
        raise NtlmError(f"NTLM message of type {int(found)} has {len(token)} bytes, fewer than {minimum_length}")


def _fields(payload: bytes, offset: int) -> bytes:
    """Pack the Len, MaxLen and BufferOffset of one payload field."""
    return struct.pack("<HHI", len(payload), len(payload), offset)


def _field(token: bytes, offset: int) -> bytes:
    length, _max_length, start = struct.unpack_from("<HHI", token, offset)
    if start + length > len(token):
        raise NtlmError(f"NTLM field at offset {offset} points past the end of the {len(token)}-byte message")
    return token[start:start + length]


def _encode_text(text: str, unicode: bool) -> bytes:
    return text.encode("utf-16-le" if unicode else "ascii")


def _decode_text(data: bytes, unicode: bool) -> str:
    try:
        return data.decode("utf-16-le" if unicode else "cp437")
    except UnicodeDecodeError as exc:
        raise NtlmError(f"NTLM name {data!r} is not valid UTF-16LE") from exc


def new_server_challenge() -> bytes:
    """Return 8 random bytes for the ServerChallenge field."""
    return os.urandom(8)


class NtlmConnection:
    """The NTLM state of one HTTP connection: which challenge is outstanding and who logged on.

    NTLM authenticates the connection, not each request, so one object lives
    as long as the connection's request handler.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the outstanding challenge and the logon, as after a malformed token."""
        self.negotiate: NegotiateMessage | None = None
        self.challenge: bytes | None = None
        self.server_challenge: bytes | None = None
        #: The account that authenticated this connection, or None before a successful handshake.
        self.account: NtlmAccount | None = None

    def challenge_for(self, negotiate: NegotiateMessage, identity: ServerIdentity) -> bytes:
        """Start a new handshake: forget any earlier logon and return the CHALLENGE_MESSAGE to send."""
        self.account = None
        self.negotiate = negotiate
        self.server_challenge = new_server_challenge()
        self.challenge = build_challenge(negotiate, self.server_challenge, identity)
        return self.challenge

    def authenticate(self, message: AuthenticateMessage, accounts: list[NtlmAccount]) -> NtlmAccount | None:
        """Finish the handshake: return the account whose password `message` proves, or None.

        The outstanding challenge is used up either way, so a failed
        AUTHENTICATE_MESSAGE needs a new NEGOTIATE_MESSAGE.
        """
        negotiate, challenge, server_challenge = self.negotiate, self.challenge, self.server_challenge
        self.negotiate = self.challenge = self.server_challenge = None
        if negotiate is None or challenge is None or server_challenge is None:
            return None
        for account in accounts:
            if account.names(message) and verify_ntlmv2(
                message, account.password, server_challenge, negotiate.raw, challenge
            ):
                self.account = account
                return account
        return None
