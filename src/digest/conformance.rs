//! The digest conformance corpus, `docs/digest-v1-conformance.jsonl`: several thousand
//! inputs chosen to exercise every rule of spec v1 and its edges, each with the normal form
//! and digest the spec gives, or the class of error it must raise. Another implementation
//! (the Python client, a member's Go or Java port) passes it case by case.
//!
//! The inputs are written out below, grouped by what they test; the expected answers are
//! computed by this crate's normaliser. `corpus_is_current` fails when the committed file
//! differs from what the code gives; `FLAGSHARE_WRITE_CONFORMANCE=1 scripts/cargo test --lib
//! conformance` rewrites it (review the diff: every changed line is a changed digest). The
//! same test writes the Python client's table of what Rust calls alphanumeric
//! (`clients/python/src/flagshare_client/_alnum.py`), so both read email domains alike.

use std::fmt::Write as _;

use super::{ConsortiumKey, Hasher, Kind, NormalizeOptions, normalize};

const CORPUS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/digest-v1-conformance.jsonl");
const ALNUM_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/clients/python/src/flagshare_client/_alnum.py"
);

/// The corpus key: bytes 0, 1, ..., 31, key id 1. Public on purpose.
fn corpus_key() -> ConsortiumKey {
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = i as u8;
    }
    ConsortiumKey::from_parts(1, secret)
}

struct Input {
    group: &'static str,
    kind: Kind,
    raw: String,
    region: Option<&'static str>,
}

struct Inputs(Vec<Input>);

impl Inputs {
    fn add(&mut self, group: &'static str, kind: Kind, raw: impl Into<String>) {
        self.0.push(Input {
            group,
            kind,
            raw: raw.into(),
            region: None,
        });
    }

    fn phone(&mut self, group: &'static str, raw: impl Into<String>, region: Option<&'static str>) {
        self.0.push(Input {
            group,
            kind: Kind::Phone,
            raw: raw.into(),
            region,
        });
    }
}

/// Unicode `White_Space`: what the spec trims.
const WHITE_SPACE: [char; 25] = [
    '\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}',
    '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200a}', '\u{2028}',
    '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
];

/// Characters some languages treat as space that Unicode `White_Space` does not hold:
/// an implementation that trims them (Python's `str.strip()` does, for U+001C..U+001F)
/// disagrees with the spec.
const NOT_WHITE_SPACE: [char; 8] = [
    '\u{1c}', '\u{1d}', '\u{1e}', '\u{1f}', '\u{200b}', '\u{feff}', '\u{180e}', '\u{2060}',
];

/// One valid input per kind, for the white-space sweeps.
fn base_inputs() -> [(Kind, &'static str, Option<&'static str>); 6] {
    [
        (Kind::Email, "alice@example.com", None),
        (Kind::Phone, "+44 7400 123456", None),
        (Kind::Username, "instagram:alice", None),
        (Kind::DeviceId, "AA:BB:CC:00:11:22", None),
        (Kind::IpAddress, "192.0.2.1", None),
        (Kind::Other, "Case Matters", None),
    ]
}

fn white_space(inputs: &mut Inputs) {
    for (kind, base, _) in base_inputs() {
        for ws in WHITE_SPACE {
            inputs.add("white-space/trimmed", kind, format!("{ws}{base}{ws}"));
        }
        for other in NOT_WHITE_SPACE {
            inputs.add("white-space/not-trimmed", kind, format!("{other}{base}"));
            inputs.add("white-space/not-trimmed", kind, format!("{base}{other}"));
        }
        inputs.add("white-space/empty", kind, "");
        inputs.add("white-space/empty", kind, " \t\u{a0}\u{3000}\u{2028} ");
    }
    // Inside an identifier: refused for email, username and device id, kept by `other`,
    // read by libphonenumber for phone numbers, never part of an IP address.
    let inner: [(Kind, &str, &str); 6] = [
        (Kind::Email, "alice", "@example.com"),
        (Kind::Phone, "+44 7400", "123456"),
        (Kind::Username, "instagram:ali", "ce"),
        (Kind::DeviceId, "AA:BB:CC", "00:11:22"),
        (Kind::IpAddress, "192.0.2", ".1"),
        (Kind::Other, "Case", "Matters"),
    ];
    for (kind, head, tail) in inner {
        for ws in WHITE_SPACE {
            inputs.add("white-space/inside", kind, format!("{head}{ws}{tail}"));
        }
        for control in ['\u{0}', '\u{1}', '\u{7f}', '\u{9f}'] {
            inputs.add("control/inside", kind, format!("{head}{control}{tail}"));
        }
    }
}

fn email(inputs: &mut Inputs) {
    let locals = [
        "alice",
        "Alice.Smith",
        "a.l.i.c.e",
        "alice+shop",
        "alice+shop+more",
        "ALICE+Tag.With.Dots",
        "o'brien",
        "first_last",
        "x",
        "user-name",
        "1234",
        "a.b+c.d",
        "\u{ff41}lice",
        "stra\u{df}e",
        "\u{130}stanbul",
        "\u{131}rmak",
        "caf\u{e9}",
        "cafe\u{301}",
        "\u{fb01}nance",
        "\u{2460}\u{2461}",
        "\u{3a3}\u{391}\u{3a3}",
        "\u{1f600}",
        "\u{7528}\u{6237}",
        "\u{212a}elvin",
    ];
    let domains = [
        "example.com",
        "Example.COM",
        "example.com.",
        "gmail.com",
        "GMail.com",
        "googlemail.com",
        "GoogleMail.COM",
        "gmail.com.",
        "sub.example.co.uk",
        "m\u{fc}nchen.de",
        "xn--mnchen-3ya.de",
        "\u{4f8b}\u{3048}.jp",
        "\u{ff45}xample.com",
        "hotmail.com",
        "yahoo.co.jp",
        "mail-server.example.org",
        "1.2.3.4",
        "\u{939}\u{93f}\u{928}\u{94d}\u{926}\u{940}.\u{92d}\u{93e}\u{930}\u{924}",
        "\u{627}\u{644}\u{639}\u{631}\u{628}\u{64a}\u{629}.example",
        "gmail.co",
    ];
    for local in locals {
        for domain in domains {
            inputs.add("email/local-and-domain", Kind::Email, format!("{local}@{domain}"));
        }
    }
    for local in ["alice", "a.lice", "A.L.I.C.E"] {
        for tag in ["+", "+x", "+a+b", "+\u{fc}n\u{ef}code", "+.dots.", "+@"] {
            for domain in ["gmail.com", "googlemail.com", "example.com"] {
                inputs.add("email/plus-tag", Kind::Email, format!("{local}{tag}@{domain}"));
            }
        }
    }
    let invalid = [
        "foo.example.com",
        "a@b@example.com",
        "\"a@b\"@example.com",
        "@example.com",
        "+tag@example.com",
        "+@example.com",
        "...@gmail.com",
        ".+x@googlemail.com",
        "foo@",
        "foo@.",
        "foo@localhost",
        "foo@localhost.",
        "foo@example..com",
        "foo@.example.com",
        "foo@example.com..",
        "foo@-example.com",
        "foo@example-.com",
        "foo@exa_mple.com",
        "foo@exa mple.com",
        "foo@[192.0.2.1]",
        "foo@example.com/x",
        "foo@\u{200b}example.com",
        "foo@ex\u{301}ample.com",
        "fo o@example.com",
        "foo\u{0}@example.com",
        "foo@@example.com",
        "@",
        "a@b",
    ];
    for raw in invalid {
        inputs.add("email/invalid", Kind::Email, raw);
    }
    // 254 bytes is the limit of the normal form, not of the input: plus-tags and gmail dots
    // are removed before it is measured.
    let domain = "example.com";
    for local_len in [240, 241, 242, 243, 250] {
        inputs.add(
            "email/length",
            Kind::Email,
            format!("{}@{domain}", "a".repeat(local_len)),
        );
    }
    inputs.add(
        "email/length",
        Kind::Email,
        format!("{}+{}@{domain}", "a".repeat(200), "t".repeat(200)),
    );
    inputs.add("email/length", Kind::Email, format!("{}@gmail.com", "a.".repeat(150)));
    inputs.add(
        "email/length",
        Kind::Email,
        format!("{}@{domain}", "\u{e9}".repeat(121)),
    );
    inputs.add(
        "email/length",
        Kind::Email,
        format!("{}@{domain}", "\u{e9}".repeat(122)),
    );
    inputs.add("email/length", Kind::Email, format!("a@{}.com", "b".repeat(5000)));
}

/// Example numbers of each region (libphonenumber's own, mobile then fixed line), in the
/// national form a member would store.
const PHONE_EXAMPLES: [(&str, &str, &str); 52] = [
    ("GB", "07400 123456", "0121 234 5678"),
    ("US", "(201) 555-0123", "(212) 555-0199"),
    ("CA", "(506) 234-5678", "(416) 555-0123"),
    ("FR", "06 12 34 56 78", "01 23 45 67 89"),
    ("DE", "01512 3456789", "030 123456"),
    ("IT", "312 345 6789", "02 1234 5678"),
    ("ES", "612 34 56 78", "810 12 34 56"),
    ("PT", "912 345 678", "21 234 5678"),
    ("NL", "06 12345678", "010 123 4567"),
    ("BE", "0450 00 12 34", "012 34 56 78"),
    ("CH", "078 123 45 67", "021 234 56 78"),
    ("AT", "0664 123456", "01 234567890"),
    ("SE", "070-123 45 67", "08-12 34 56"),
    ("NO", "40 61 23 45", "21 23 45 67"),
    ("DK", "34 41 23 45", "32 12 34 56"),
    ("FI", "041 2345678", "013 1234567"),
    ("PL", "512 345 678", "12 345 67 89"),
    ("CZ", "601 123 456", "212 345 678"),
    ("IE", "085 012 3456", "(022) 12345"),
    ("GR", "691 234 5678", "21 2345 6789"),
    ("TR", "0501 234 56 78", "(0212) 345 67 89"),
    ("RU", "8 (912) 345-67-89", "8 (301) 123-45-67"),
    ("UA", "050 123 4567", "03112 34567"),
    ("IN", "081234 56789", "074104 10123"),
    ("PK", "0301 2345678", "(021) 23456789"),
    ("BD", "01812-345678", "02-7111234"),
    ("CN", "131 2345 6789", "010 1234 5678"),
    ("JP", "090-1234-5678", "03-1234-5678"),
    ("KR", "010-2000-0000", "02-212-3456"),
    ("AU", "0412 345 678", "(02) 1234 5678"),
    ("NZ", "021 123 4567", "03 234 5678"),
    ("BR", "(11) 96123-4567", "(11) 2345-6789"),
    ("AR", "011 15-2345-6789", "011 2345-6789"),
    ("MX", "222 123 4567", "200 123 4567"),
    ("CO", "321 1234567", "(601) 2345678"),
    ("CL", "(2) 2123 4567", "600 123 456"),
    ("ZA", "071 123 4567", "010 123 4567"),
    ("NG", "0802 123 4567", "02033 12 3456"),
    ("KE", "0712 123456", "020 2012345"),
    ("EG", "010 01234567", "02 34567890"),
    ("MA", "06 50 12 34 56", "05 20 12 34 56"),
    ("SA", "051 234 5678", "011 234 5678"),
    ("AE", "050 123 4567", "02 234 5678"),
    ("IL", "050-234-5678", "02-123-4567"),
    ("SG", "8123 4567", "6123 4567"),
    ("MY", "012-345 6789", "03-2385 6789"),
    ("ID", "0812-345-678", "(021) 8350123"),
    ("PH", "0905 123 4567", "(02) 3234 5678"),
    ("TH", "081 234 5678", "02 123 4567"),
    ("VN", "0912 345 678", "0210 1234 567"),
    ("HK", "5123 4567", "2123 4567"),
    ("TW", "0912 345 678", "02 2123 4567"),
];

fn phone(inputs: &mut Inputs) {
    for (region, mobile, fixed) in PHONE_EXAMPLES {
        for national in [mobile, fixed] {
            inputs.phone("phone/national", national, Some(region));
            let digits: String = national.chars().filter(char::is_ascii_digit).collect();
            inputs.phone("phone/national", digits.clone(), Some(region));
            inputs.phone("phone/no-region", national, None);
            inputs.phone("phone/extension", format!("{national} ext. 123"), Some(region));
            inputs.phone("phone/extension", format!("{national} x 42"), Some(region));
            let parsed = region
                .parse::<phonenumber::country::Id>()
                .ok()
                .and_then(|id| phonenumber::parse(Some(id), national).ok());
            if let Some(number) = parsed {
                let international = number.format().mode(phonenumber::Mode::International).to_string();
                let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
                inputs.phone("phone/international", international.clone(), None);
                inputs.phone("phone/international", e164.clone(), None);
                // An international number ignores the default region.
                inputs.phone("phone/international", international.replace(' ', "-"), Some("US"));
                inputs.phone("phone/international", e164.replace('+', "\u{ff0b}"), None);
                // Dialled from abroad: the default region's international prefix.
                let subscriber = e164.trim_start_matches('+');
                inputs.phone("phone/dialled-abroad", format!("00 {subscriber}"), Some("FR"));
                inputs.phone("phone/dialled-abroad", format!("011 {subscriber}"), Some("US"));
            }
            // Too short to be a number in that plan.
            if digits.len() > 5 {
                inputs.phone("phone/truncated", digits[..digits.len() - 3].to_owned(), Some(region));
            }
        }
    }
    for raw in [
        "+44",
        "+",
        "+0 123 456",
        "+999 123 456 789",
        "+1 (202) 555-01",
        "+44 7400 123456 123456",
        "not a number",
        "+1 abc",
        "++44 7400 123456",
    ] {
        inputs.phone("phone/invalid", raw, None);
    }
    inputs.phone("phone/invalid", format!("+{}", "1".repeat(300)), None);
    inputs.phone("phone/invalid", "1".repeat(5000), Some("GB"));
    inputs.phone("phone/digits", "+44 \u{660}\u{667}\u{664}\u{660}\u{660} 123456", None);
    inputs.phone("phone/digits", "+44 \u{ff17}\u{ff14}\u{ff10}\u{ff10} 123456", None);
    for raw in [
        "+44 (0)7400-123456 ext. 12",
        "+44 7400 123456;ext=12",
        "+44 7400 123456#",
        "+44 7400 123456, 2",
        "+44 7400 123456 EXTENSION 7",
        "tel:+44-7400-123456",
        "+44 7400 123456 \u{2013} work",
        "+1 784 8263",
        "+1 1 201 555 0123",
        "+44 0 7400 123456",
        "+44 00 7400 123456",
        "+39 02 1234 5678",
        "+39 (0)2 1234 5678",
        "+44 7400 1234_56",
        "+44 [7400] 123456",
    ] {
        inputs.phone("phone/spelling", raw, None);
    }
    for raw in ["1-800-FLOWERS", "1 (201) 555-0123", "201.555.0123", "+1 201 555 0123 x"] {
        inputs.phone("phone/spelling", raw, Some("US"));
    }
    inputs.phone("phone/punctuation", "+44 (0) 7400 123456", None);
    inputs.phone("phone/punctuation", "+44.7400.123.456", None);
    inputs.phone("phone/punctuation", "+44/7400/123456", None);
}

fn username(inputs: &mut Inputs) {
    let platforms = ["instagram", "Instagram", " TikTok ", "x.com", "my_app-2", "DISCORD"];
    let names = [
        "alice",
        "@Alice",
        "@@alice",
        " @alice ",
        "Stra\u{df}e",
        "STRASSE",
        "\u{1e9e}",
        "\u{130}brahim",
        "\u{131}\u{130}",
        "\u{ff26}\u{ff55}\u{ff4c}\u{ff4c}",
        "cafe\u{301}",
        "caf\u{e9}",
        "CAF\u{c9}",
        "\u{fb03}",
        "\u{38c}\u{3a3}\u{39f}\u{3a3}",
        "\u{3c3}\u{3c2}",
        "\u{13a0}\u{13a1}",
        "\u{ab70}\u{ab71}",
        "\u{212a}elvin",
        "\u{2126}",
        "name.with.dots",
        "\u{540d}\u{524d}",
        "\u{1f600}smile",
        "a\u{200b}b",
        "\u{24b6}\u{24b7}",
        "\u{1c90}\u{10d0}",
        "\u{10400}\u{10428}",
        "x:y",
    ];
    for platform in platforms {
        for name in names {
            inputs.add(
                "username/platform-and-name",
                Kind::Username,
                format!("{platform}:{name}"),
            );
        }
    }
    // Case folding, character by character: Latin, Greek, Cyrillic, Armenian, Georgian,
    // Cherokee, Deseret and the special cases of full folding.
    let folds = [
        '\u{c0}',
        '\u{c5}',
        '\u{c6}',
        '\u{d0}',
        '\u{d8}',
        '\u{de}',
        '\u{df}',
        '\u{ff}',
        '\u{100}',
        '\u{130}',
        '\u{131}',
        '\u{132}',
        '\u{149}',
        '\u{178}',
        '\u{17f}',
        '\u{1c4}',
        '\u{1c5}',
        '\u{1c6}',
        '\u{1f0}',
        '\u{1f1}',
        '\u{345}',
        '\u{390}',
        '\u{3a3}',
        '\u{3c2}',
        '\u{3d0}',
        '\u{3d1}',
        '\u{3f4}',
        '\u{3f5}',
        '\u{401}',
        '\u{42f}',
        '\u{44f}',
        '\u{460}',
        '\u{531}',
        '\u{587}',
        '\u{10a0}',
        '\u{10d0}',
        '\u{1c90}',
        '\u{13a0}',
        '\u{13f8}',
        '\u{ab70}',
        '\u{1e96}',
        '\u{1e9b}',
        '\u{1e9e}',
        '\u{1f50}',
        '\u{1f80}',
        '\u{1f88}',
        '\u{1fb3}',
        '\u{1fbc}',
        '\u{1fd3}',
        '\u{2126}',
        '\u{212a}',
        '\u{212b}',
        '\u{2160}',
        '\u{24b6}',
        '\u{2c00}',
        '\u{fb00}',
        '\u{fb05}',
        '\u{fb06}',
        '\u{fb13}',
        '\u{ff21}',
        '\u{10400}',
        '\u{10428}',
        '\u{118a0}',
        '\u{1e900}',
        '\u{2167}',
        '\u{2170}',
        '\u{3392}',
        '\u{33c7}',
        '\u{2122}',
        '\u{a7ae}',
        '\u{1d400}',
        '\u{1d7ce}',
    ];
    for c in folds {
        inputs.add("username/case-fold", Kind::Username, format!("x:{c}"));
        inputs.add("username/case-fold", Kind::Username, format!("x:a{c}z"));
    }
    let invalid = [
        "alice",
        ":alice",
        " :alice",
        "insta gram:alice",
        "\u{ed}nsta:alice",
        "insta/gram:alice",
        "x:",
        "x:@",
        "x: @ ",
        "x:a b",
        "x:a\u{3000}b",
        "x:a\u{1}b",
        "x:\u{0}",
    ];
    for raw in invalid {
        inputs.add("username/invalid", Kind::Username, raw);
    }
    inputs.add("username/invalid", Kind::Username, format!("{}:alice", "a".repeat(64)));
    inputs.add("username/invalid", Kind::Username, format!("{}:alice", "a".repeat(65)));
    for (name, count) in [
        ("a", 256),
        ("a", 257),
        ("\u{e9}", 128),
        ("\u{e9}", 129),
        ("\u{df}", 128),
        ("\u{df}", 129),
    ] {
        inputs.add("username/length", Kind::Username, format!("x:{}", name.repeat(count)));
    }
    inputs.add(
        "username/length",
        Kind::Username,
        format!("x:{}", "\u{fb03}".repeat(86)),
    );
    inputs.add(
        "username/length",
        Kind::Username,
        format!("x:{}", "\u{fb03}".repeat(85)),
    );
}

fn device_id(inputs: &mut Inputs) {
    let valid = [
        "AA:BB:CC:00:11:22",
        "aa-bb-cc-00-11-22",
        "AABB.CC00.1122",
        "aabbcc001122",
        "AA BB CC 00 11 22",
        "\u{ff21}\u{ff21}:\u{ff22}\u{ff22}:CC:00:11:22",
        "123E4567-E89B-12D3-A456-426614174000",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "35-209900-176148-1",
        "352099001761481",
        "35 209900 176148 1",
        "android-id_xyz",
        "IDFA:ABC-XYZ",
        "0x1F",
        "DEADBEEF",
        "-",
        ":::",
        "a-",
        "\u{2460}\u{2461}",
        "\u{130}D",
        "Stra\u{df}e",
        "caf\u{e9}-01",
        "\u{1f4f1}-01",
        "a_b_c",
    ];
    for raw in valid {
        inputs.add("device-id/forms", Kind::DeviceId, raw);
    }
    // MAC addresses in every separator style, from a fixed sequence of bytes.
    let mut state: u32 = 0x1234_5678;
    for _ in 0..50 {
        let mut bytes = [0u8; 6];
        for byte in bytes.iter_mut() {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *byte = (state >> 16) as u8;
        }
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        inputs.add("device-id/mac", Kind::DeviceId, hex.join(":"));
        inputs.add("device-id/mac", Kind::DeviceId, hex.join("-").to_lowercase());
        inputs.add(
            "device-id/mac",
            Kind::DeviceId,
            format!("{}{}.{}{}.{}{}", hex[0], hex[1], hex[2], hex[3], hex[4], hex[5]),
        );
    }
    for raw in ["a b\tc", "aa\u{a0}bb", "aa\u{3000}bb", "dev\u{1}ice", "x y"] {
        inputs.add("device-id/invalid", Kind::DeviceId, raw);
    }
    inputs.add("device-id/length", Kind::DeviceId, "g".repeat(256));
    inputs.add("device-id/length", Kind::DeviceId, "g".repeat(257));
    inputs.add("device-id/length", Kind::DeviceId, "ab:".repeat(128));
    inputs.add("device-id/length", Kind::DeviceId, "ab:".repeat(129));
    inputs.add("device-id/length", Kind::DeviceId, "\u{e9}".repeat(129));
}

fn ip_address(inputs: &mut Inputs) {
    let forms = [
        "192.0.2.1",
        "0.0.0.0",
        "255.255.255.255",
        "10.0.0.1",
        "[192.0.2.1]",
        "010.0.0.1",
        "192.0.2.01",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "1..2.3",
        "0x7f.0.0.1",
        "127.1",
        "2130706433",
        "1.2.3.4/24",
        "1.2.3.4:80",
        "\u{661}.2.3.4",
        "\u{ff11}.2.3.4",
        "2001:DB8::1",
        "2001:0db8:0000:0000:0000:0000:0000:0001",
        "::",
        "::1",
        "1::",
        "[::1]",
        "[2001:db8::1]",
        "::ffff:192.0.2.1",
        "::FFFF:C000:0201",
        "0:0:0:0:0:ffff:192.0.2.1",
        "::192.0.2.1",
        "64:ff9b::192.0.2.1",
        "::ffff:0:192.0.2.1",
        "fe80::1%eth0",
        "fe80::1%25eth0",
        "[fe80::1%eth0]",
        ":::",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7",
        "12345::",
        "::ffff:010.0.0.1",
        "::ffff:256.0.0.1",
        "[::1",
        "::1]",
        "[[::1]]",
        "1::2::3",
        "g::1",
        "2001:db8::1/64",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:1.2.3.4",
        "\u{ff12}001:db8::1",
    ];
    for raw in forms {
        inputs.add("ip-address/forms", Kind::IpAddress, raw);
    }
    // RFC 5952 compression: every pattern of zero and non-zero groups, so the longest run
    // (the first of equal runs, never a single group) is the one compressed.
    for pattern in 0u32..256 {
        let groups: Vec<String> = (0..8)
            .map(|i| {
                if pattern & (1 << i) != 0 {
                    format!("{:x}", 0xa0 + i)
                } else {
                    "0".to_owned()
                }
            })
            .collect();
        inputs.add("ip-address/rfc5952", Kind::IpAddress, groups.join(":"));
        if pattern % 4 == 0 {
            let padded: Vec<String> = groups.iter().map(|g| format!("{:0>4}", g.to_uppercase())).collect();
            inputs.add("ip-address/rfc5952", Kind::IpAddress, padded.join(":"));
        }
    }
    for (a, b, c, d) in [
        (0, 0, 0, 1),
        (1, 0, 0, 0),
        (127, 0, 0, 1),
        (169, 254, 0, 1),
        (100, 64, 0, 0),
    ] {
        inputs.add("ip-address/forms", Kind::IpAddress, format!("{a}.{b}.{c}.{d}"));
        inputs.add("ip-address/forms", Kind::IpAddress, format!("::ffff:{a}.{b}.{c}.{d}"));
        inputs.add("ip-address/forms", Kind::IpAddress, format!("[::ffff:{a}.{b}.{c}.{d}]"));
    }
}

fn other(inputs: &mut Inputs) {
    let forms = [
        "Case Matters",
        "cafe\u{301}",
        "caf\u{e9}",
        "\u{212b}",
        "\u{fb01}",
        "\u{ff21}",
        "A\u{30a}",
        "\u{1100}\u{1161}\u{11a8}",
        "a\tb",
        "paypal.me/Someone",
        "$CashTag",
        "\u{1f600}",
        "e\u{301}\u{327}",
        "e\u{327}\u{301}",
        "\u{3d3}",
        "\u{2126}",
    ];
    for raw in forms {
        inputs.add("other/forms", Kind::Other, raw);
    }
    inputs.add("other/length", Kind::Other, "o".repeat(1024));
    inputs.add("other/length", Kind::Other, "o".repeat(1025));
    inputs.add("other/length", Kind::Other, "\u{e9}".repeat(512));
    inputs.add("other/length", Kind::Other, "e\u{301}".repeat(512));
    inputs.add("other/length", Kind::Other, "\u{e9}".repeat(513));
}

fn all_inputs() -> Vec<Input> {
    let mut inputs = Inputs(Vec::new());
    white_space(&mut inputs);
    email(&mut inputs);
    phone(&mut inputs);
    username(&mut inputs);
    device_id(&mut inputs);
    ip_address(&mut inputs);
    other(&mut inputs);
    inputs.0
}

/// A JSON string with every non-ASCII or invisible character escaped, so the corpus reads
/// the same in any editor and a reviewer sees each NBSP and combining mark.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

fn region_option(region: Option<&str>) -> NormalizeOptions {
    NormalizeOptions {
        default_phone_region: region.and_then(|r| r.parse().ok()),
    }
}

fn render() -> String {
    let key = corpus_key();
    let hasher = Hasher::new(&key);
    let inputs = all_inputs();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{{\"corpus\":\"flagshare digest v1 conformance\",\"key\":\"{}\",\"key_id\":{},\"cases\":{}}}",
        hex::encode(key.secret()),
        key.key_id(),
        inputs.len()
    );
    for input in &inputs {
        let region = match input.region {
            Some(region) => json_string(region),
            None => "null".to_owned(),
        };
        let _ = write!(
            out,
            "{{\"group\":{},\"kind\":\"{}\",\"input\":{},\"region\":{region},",
            json_string(input.group),
            input.kind,
            json_string(&input.raw)
        );
        match hasher.digest(input.kind, &input.raw, &region_option(input.region)) {
            Ok((normal, digest)) => {
                let _ = writeln!(
                    out,
                    "\"normal\":{},\"digest\":\"{}\"}}",
                    json_string(&normal),
                    hex::encode(digest)
                );
            }
            Err(err) => {
                let _ = writeln!(out, "\"error\":\"{}\"}}", err.class.as_str());
            }
        }
    }
    out
}

/// What Rust's `char::is_alphanumeric` holds (Unicode Alphabetic or Numeric), as ranges.
/// The email rule "letters, digits and '-'" is this; Python's `str.isalnum` differs (it
/// leaves out combining vowel signs, for one), so the Python client reads this table.
fn render_alnum_table() -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for code in 0..=0x10FFFFu32 {
        let Some(c) = char::from_u32(code) else { continue };
        if !c.is_alphanumeric() {
            continue;
        }
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == code => *end = code,
            _ => ranges.push((code, code)),
        }
    }
    let mut out = String::from(
        "# Generated by the Rust test digest::conformance (FLAGSHARE_WRITE_CONFORMANCE=1); do not edit.\n\
         # Code point ranges (first, last), inclusive, of Unicode Alphabetic or Numeric characters:\n\
         # what docs/digest-v1.md means by letters and digits in an email domain.\n\
         RANGES = (\n",
    );
    for (start, end) in ranges {
        let _ = writeln!(out, "    (0x{start:X}, 0x{end:X}),");
    }
    out.push_str(")\n");
    out
}

fn write_requested() -> bool {
    std::env::var("FLAGSHARE_WRITE_CONFORMANCE").is_ok_and(|value| value == "1")
}

#[test]
fn corpus_is_current() {
    let corpus = render();
    let table = render_alnum_table();
    if write_requested() {
        std::fs::write(CORPUS_PATH, &corpus).unwrap();
        std::fs::write(ALNUM_PATH, &table).unwrap();
    }
    let committed = std::fs::read_to_string(CORPUS_PATH).unwrap();
    let stale = "stale: regenerate with FLAGSHARE_WRITE_CONFORMANCE=1 scripts/cargo test --lib conformance";
    assert!(committed == corpus, "docs/digest-v1-conformance.jsonl is {stale}");
    let committed = std::fs::read_to_string(ALNUM_PATH).unwrap();
    assert!(
        committed == table,
        "clients/python/src/flagshare_client/_alnum.py is {stale}"
    );
}

/// Reads the committed corpus as another implementation would and checks every case,
/// independently of the generator above.
#[test]
fn every_committed_case_holds() {
    let text = std::fs::read_to_string(CORPUS_PATH).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let secret: [u8; 32] = hex::decode(header["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let hasher = Hasher::new(&ConsortiumKey::from_parts(1, secret));
    let mut n_cases = 0;
    let mut classes = std::collections::BTreeSet::new();
    for line in lines {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let kind: Kind = case["kind"].as_str().unwrap().parse().unwrap();
        let input = case["input"].as_str().unwrap();
        let options = region_option(case["region"].as_str());
        let result = normalize(kind, input, &options);
        match case["error"].as_str() {
            Some(class) => {
                let err = result.expect_err(input);
                assert_eq!(err.class.as_str(), class, "{input:?}: {err}");
                classes.insert(class.to_owned());
            }
            None => {
                let normal = result.unwrap_or_else(|err| panic!("{input:?}: {err}"));
                assert_eq!(normal, case["normal"].as_str().unwrap(), "{input:?}");
                let digest = hex::encode(hasher.digest_normalized(kind, &normal));
                assert_eq!(digest, case["digest"].as_str().unwrap(), "{input:?}");
            }
        }
        n_cases += 1;
    }
    assert_eq!(n_cases, header["cases"].as_u64().unwrap());
    assert!(n_cases >= 3000, "{n_cases} cases");
    // Every class of error is exercised.
    for class in super::InvalidClass::ALL {
        assert!(classes.contains(class.as_str()), "no case of {}", class.as_str());
    }
}
