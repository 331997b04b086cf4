"""Identifier normalisation, spec v1 (docs/digest-v1.md), step for step as the Rust code.

Every rule matters: a normal form that differs by one character gives a digest that never
matches, silently. `tests/test_conformance.py` checks this module against every case of
docs/digest-v1-conformance.jsonl, which the Rust implementation writes.
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import unicodedata

import phonenumbers

from ._alnum import RANGES as _ALNUM_RANGES


class Kind(str, enum.Enum):
    """The kind of identifier; its value is the spec's name (and the CLI's)."""

    EMAIL = "email"
    PHONE = "phone"
    USERNAME = "username"
    DEVICE_ID = "device_id"
    IP_ADDRESS = "ip_address"
    OTHER = "other"

    @classmethod
    def parse(cls, value: "Kind | str") -> "Kind":
        if isinstance(value, Kind):
            return value
        wanted = str(value).strip().lower().replace("-", "_")
        if wanted == "ip":
            return Kind.IP_ADDRESS
        try:
            return Kind(wanted)
        except ValueError:
            raise ValueError(
                f"unknown identifier kind {value!r} (expected email, phone, username, device_id, ip_address or other)"
            ) from None


class InvalidIdentifier(ValueError):
    """An identifier that spec v1 refuses. `error_class` is the corpus's class name
    (the same in every implementation); the message says why in words."""

    def __init__(self, kind: Kind, error_class: str, reason: str):
        super().__init__(f"invalid {kind.value} identifier: {reason}")
        self.kind = kind
        self.error_class = error_class
        self.reason = reason


# Unicode White_Space, which the spec trims. Not str.strip()'s set: that one also holds
# U+001C..U+001F, which the spec (and Rust's str::trim) keeps.
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WHITE_SPACE_SET = frozenset(WHITE_SPACE)

_MAX_FREE_FORM_LEN = 256
_MAX_EMAIL_LEN = 254
_DOT_INSENSITIVE_EMAIL_DOMAINS = ("gmail.com", "googlemail.com")
_DEVICE_SEPARATORS = str.maketrans("", "", "-:. ")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_EXTENSION_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#;,")
_PHONE_CHARS = frozenset("0123456789-.()/")
_DIGITS_AND_PLUS = frozenset("0123456789+")
_PLATFORM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


class _Refused(Exception):
    def __init__(self, error_class: str, reason: str):
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _is_control(c: str) -> bool:
    # Rust's char::is_control: general category Cc.
    return unicodedata.category(c) == "Cc"


def _has_space_or_control(text: str) -> bool:
    return any(c in _WHITE_SPACE_SET or _is_control(c) for c in text)


def _is_alphanumeric(c: str) -> bool:
    # Rust's char::is_alphanumeric (Unicode Alphabetic or Numeric), from a table the Rust
    # tests write: str.isalnum() leaves out combining vowel signs and other marks.
    code = ord(c)
    i = bisect.bisect_right(_ALNUM_RANGES, (code, 0x110000)) - 1
    return i >= 0 and _ALNUM_RANGES[i][0] <= code <= _ALNUM_RANGES[i][1]


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def normalize(kind: Kind | str, raw: str, region: str | None = None) -> str:
    """The normal form of `raw` read as `kind`; raises InvalidIdentifier saying why it is
    not a valid identifier. `region` (ISO 3166, e.g. "GB") is the default region of phone
    numbers written without a `+` country code; other kinds ignore it."""
    kind = Kind.parse(kind)
    if not isinstance(raw, str):
        raise TypeError(f"identifier must be str, not {type(raw).__name__}")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidIdentifier(kind, "space_or_control", "it is not valid Unicode text (lone surrogate)") from None
    trimmed = raw.strip(WHITE_SPACE)
    try:
        if not trimmed:
            raise _Refused("empty", "it is empty")
        if kind is Kind.EMAIL:
            return _email(trimmed)
        if kind is Kind.PHONE:
            return _phone(trimmed, region)
        if kind is Kind.USERNAME:
            return _username(trimmed)
        if kind is Kind.DEVICE_ID:
            return _device_id(trimmed)
        if kind is Kind.IP_ADDRESS:
            return _ip_address(trimmed)
        return _other(trimmed)
    except _Refused as refused:
        raise InvalidIdentifier(kind, refused.error_class, refused.reason) from None


def _email(trimmed: str) -> str:
    lowered = _nfkc(trimmed).lower()
    if _has_space_or_control(lowered):
        raise _Refused("space_or_control", "it contains white space or control characters")
    local, at, domain = lowered.rpartition("@")
    if not at:
        raise _Refused("no_at", "it has no '@'")
    if "@" in local:
        raise _Refused("many_at", "it has more than one '@'")
    if not local:
        raise _Refused("empty_local_part", "the part before '@' is empty")
    if domain.endswith("."):
        domain = domain[:-1]
    _email_domain(domain)
    # Plus-tags are dropped for every provider: offenders use them to register again.
    local = local.split("+", 1)[0]
    if not local:
        raise _Refused("empty_local_part", "the part before '@' is empty once its plus-tag is removed")
    if domain in _DOT_INSENSITIVE_EMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    if not local:
        raise _Refused("empty_local_part", "the part before '@' is empty once its dots are removed")
    normal = f"{local}@{domain}"
    if _utf8_len(normal) > _MAX_EMAIL_LEN:
        raise _Refused("too_long", f"it is longer than {_MAX_EMAIL_LEN} bytes")
    return normal


def _email_domain(domain: str) -> None:
    if not domain:
        raise _Refused("bad_domain", "the domain after '@' is empty")
    if "." not in domain:
        raise _Refused("bad_domain", f"the domain '{domain}' has no dot")
    for label in domain.split("."):
        well_formed = (
            label != ""
            and not label.startswith("-")
            and not label.endswith("-")
            and all(_is_alphanumeric(c) or c == "-" for c in label)
        )
        if not well_formed:
            raise _Refused("bad_domain", f"the domain '{domain}' has a malformed label '{label}'")


def _phone(trimmed: str, region: str | None) -> str:
    international = trimmed.startswith("+")
    if not international and region is None:
        raise _Refused(
            "no_region",
            "it has no '+' country code and no default region was given (write it as +<country code><number>)",
        )
    if not international and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise _Refused("bad_phone", f"'{region}' is not a region libphonenumber knows")
    # libphonenumber reads other scripts' digits as 0-9; the spec refuses them (so do the
    # Rust port and therefore every implementation).
    if any(unicodedata.category(c) in ("Nd", "Nl", "No") and not ("0" <= c <= "9") for c in trimmed):
        raise _Refused("bad_phone", "it has digits other than ASCII 0-9")
    # libphonenumber's ports read extensions, stray characters and separators each their
    # own way, so the spec drops the extension itself (from the first letter or '#', ';', ',' on) and lets
    # through only digits, one leading '+', white space and the separators "-.()/".
    number_part = trimmed
    for at, c in enumerate(trimmed):
        if c in _EXTENSION_START:
            number_part = trimmed[:at]
            break
    for at, c in enumerate(number_part):
        if not (c in _PHONE_CHARS or c in _WHITE_SPACE_SET or (c == "+" and at == 0)):
            raise _Refused("bad_phone", f"it has {c!r}, not a digit, white space or one of + - . ( ) /")
    # Separators go too: libphonenumber is given '+' and digits only, where its ports agree.
    digits = "".join(c for c in number_part if c in _DIGITS_AND_PLUS)
    try:
        number = phonenumbers.parse(digits, None if international else region.upper(), keep_raw_input=True)
    except phonenumbers.NumberParseException as err:
        raise _Refused("bad_phone", f"it does not parse as a phone number ({err})") from None
    # Dialled with an international access code ("00 44 ...", "011 44 ..."): refused, since
    # libphonenumber's ports disagree on some of them and a wrong number matches someone else.
    if number.country_code_source == phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD:
        raise _Refused(
            "bad_phone", "it is dialled with an international access code: write it as +<country code><number>"
        )
    if not phonenumbers.is_valid_number(number):
        raise _Refused("bad_phone", "it is not a valid number in its country's numbering plan")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if international:
        # A number written with '+' says every digit: only a '0' trunk prefix after the
        # country code ("+44 (0) 7400 123456") may go; a rewritten number is refused.
        written, normal, code = digits[1:], e164[1:], str(number.country_code)
        trunk_dropped = written.startswith(code + "0") and normal == code + written[len(code) + 1 :]
        if written != normal and not trunk_dropped:
            raise _Refused("bad_phone", f"its digits are not a number as written: libphonenumber reads them as +{normal}")
    return e164


def _username(trimmed: str) -> str:
    platform, colon, name = trimmed.partition(":")
    if not colon:
        raise _Refused("no_platform", "it has no platform scope: write it as <platform>:<name>, e.g. instagram:alice")
    platform = platform.strip(WHITE_SPACE).translate(_ASCII_LOWER)
    if not (0 < len(platform) <= 64 and all(c in _PLATFORM_CHARS for c in platform)):
        raise _Refused("bad_platform", f"the platform '{platform}' must be 1 to 64 of a-z, 0-9, '.', '-' and '_'")
    name = name.strip(WHITE_SPACE)
    if name.startswith("@"):
        name = name[1:]
    # NFKC, full case folding, NFKC again: folding can leave text unnormalised.
    folded = _nfkc(_nfkc(name).casefold())
    if not folded:
        raise _Refused("empty_name", "the name after the platform is empty")
    if _has_space_or_control(folded):
        raise _Refused("space_or_control", "the name contains white space or control characters")
    if _utf8_len(folded) > _MAX_FREE_FORM_LEN:
        raise _Refused("too_long", f"the name is longer than {_MAX_FREE_FORM_LEN} bytes")
    return f"{platform}:{folded}"


def _device_id(trimmed: str) -> str:
    lowered = _nfkc(trimmed).lower()
    # Hardware and advertising ids are hex with assorted separators: drop them.
    compact = lowered.translate(_DEVICE_SEPARATORS)
    normal = compact if compact and all(c in _HEX_DIGITS for c in compact) else lowered
    if _has_space_or_control(normal):
        raise _Refused("space_or_control", "it contains white space or control characters")
    if _utf8_len(normal) > _MAX_FREE_FORM_LEN:
        raise _Refused("too_long", f"it is longer than {_MAX_FREE_FORM_LEN} bytes")
    return normal


def _ip_address(trimmed: str) -> str:
    text = trimmed[1:-1] if trimmed.startswith("[") and trimmed.endswith("]") and len(trimmed) >= 2 else trimmed
    refused = _Refused("bad_ip", "it is not an IPv4 address in dotted decimal or an IPv6 address")
    # The ipaddress module accepts zone ids (fe80::1%eth0) and non-ASCII digits in places;
    # the spec accepts neither.
    if not text.isascii() or "%" in text:
        raise refused
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise refused from None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else address.compressed
    return str(address)


def _other(trimmed: str) -> str:
    normal = unicodedata.normalize("NFC", trimmed)
    if _utf8_len(normal) > _MAX_FREE_FORM_LEN * 4:
        raise _Refused("too_long", f"it is longer than {_MAX_FREE_FORM_LEN * 4} bytes")
    return normal
