//! Normalisation rules of spec v1. Each rule is written out in docs/digest-v1.md; keep the
//! two in step, and add a test vector for every rule changed.

use std::net::IpAddr;

use unicode_normalization::UnicodeNormalization;

use super::{InvalidClass, InvalidIdentifier, Kind, NormalizeOptions};

/// A refusal: its class (the same in every implementation of the spec) and its reason.
type Refusal = (InvalidClass, String);

fn refuse<T>(class: InvalidClass, reason: impl Into<String>) -> Result<T, Refusal> {
    Err((class, reason.into()))
}

/// Longest accepted normal form of a username, device id or `other` identifier, in bytes.
const MAX_FREE_FORM_LEN: usize = 256;
/// Longest accepted email address (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Email providers whose local parts ignore dots. `googlemail.com` is an alias of `gmail.com`.
const DOT_INSENSITIVE_EMAIL_DOMAINS: [&str; 2] = ["gmail.com", "googlemail.com"];

/// Returns the normal form of `raw` read as `kind`, or why it is not a valid identifier.
pub fn normalize(kind: Kind, raw: &str, options: &NormalizeOptions) -> Result<String, InvalidIdentifier> {
    let trimmed = raw.trim();
    let normal = if trimmed.is_empty() {
        refuse(InvalidClass::Empty, "it is empty")
    } else {
        match kind {
            Kind::Email => normalize_email(trimmed),
            Kind::Phone => normalize_phone(trimmed, options),
            Kind::Username => normalize_username(trimmed),
            Kind::DeviceId => normalize_device_id(trimmed),
            Kind::IpAddress => normalize_ip(trimmed),
            Kind::Other => normalize_other(trimmed),
        }
    };
    normal.map_err(|(class, reason)| InvalidIdentifier { kind, class, reason })
}

fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn normalize_email(trimmed: &str) -> Result<String, Refusal> {
    let lowered: String = trimmed.nfkc().collect::<String>().to_lowercase();
    if has_space_or_control(&lowered) {
        return refuse(
            InvalidClass::SpaceOrControl,
            "it contains white space or control characters".to_owned(),
        );
    }
    let Some((local, domain)) = lowered.rsplit_once('@') else {
        return refuse(InvalidClass::NoAt, "it has no '@'".to_owned());
    };
    if local.contains('@') {
        return refuse(InvalidClass::ManyAt, "it has more than one '@'".to_owned());
    }
    if local.is_empty() {
        return refuse(InvalidClass::EmptyLocalPart, "the part before '@' is empty".to_owned());
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    validate_email_domain(domain)?;
    // Plus-tags ("alice+shop@") are dropped for every provider: most large providers
    // deliver them to the base address, and offenders use them to register again.
    let local = match local.split_once('+') {
        Some((base, _tag)) => base,
        None => local,
    };
    if local.is_empty() {
        return refuse(
            InvalidClass::EmptyLocalPart,
            "the part before '@' is empty once its plus-tag is removed".to_owned(),
        );
    }
    let (local, domain) = if DOT_INSENSITIVE_EMAIL_DOMAINS.contains(&domain) {
        (local.replace('.', ""), "gmail.com")
    } else {
        (local.to_owned(), domain)
    };
    if local.is_empty() {
        return refuse(
            InvalidClass::EmptyLocalPart,
            "the part before '@' is empty once its dots are removed".to_owned(),
        );
    }
    let normal = format!("{local}@{domain}");
    if normal.len() > MAX_EMAIL_LEN {
        return refuse(
            InvalidClass::TooLong,
            format!("it is longer than {MAX_EMAIL_LEN} bytes"),
        );
    }
    Ok(normal)
}

fn validate_email_domain(domain: &str) -> Result<(), Refusal> {
    if domain.is_empty() {
        return refuse(InvalidClass::BadDomain, "the domain after '@' is empty".to_owned());
    }
    if !domain.contains('.') {
        return refuse(InvalidClass::BadDomain, format!("the domain '{domain}' has no dot"));
    }
    for label in domain.split('.') {
        let well_formed = !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !well_formed {
            return refuse(
                InvalidClass::BadDomain,
                format!("the domain '{domain}' has a malformed label '{label}'"),
            );
        }
    }
    Ok(())
}

fn normalize_phone(trimmed: &str, options: &NormalizeOptions) -> Result<String, Refusal> {
    let international = trimmed.starts_with('+');
    if !international && options.default_phone_region.is_none() {
        return refuse(
            InvalidClass::NoRegion,
            "it has no '+' country code and no default region was given (write it as +<country code><number>)",
        );
    }
    let region = if international {
        None
    } else {
        options.default_phone_region
    };
    // libphonenumber reads other scripts' digits as 0-9; the Rust port refuses them. The
    // spec refuses them too, so every implementation agrees.
    if trimmed.chars().any(|c| c.is_numeric() && !c.is_ascii_digit()) {
        return refuse(InvalidClass::BadPhone, "it has digits other than ASCII 0-9");
    }
    // libphonenumber's ports read extensions, stray characters and separators each their
    // own way (one reads "+33 4x386888" as an extension, another as digits; one cannot
    // parse "+1582656.42-68"). So the spec drops the extension itself, from the first
    // letter or '#', ';', ',' on, and lets through only digits, one leading '+', white
    // space and the separators "-.()/".
    let number_part = match trimmed.find(|c: char| c.is_ascii_alphabetic() || matches!(c, '#' | ';' | ',')) {
        Some(at) => &trimmed[..at],
        None => trimmed,
    };
    let stray = number_part.char_indices().find(|&(at, c)| {
        !(c.is_ascii_digit() || c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')' | '/') || (c == '+' && at == 0))
    });
    if let Some((_, c)) = stray {
        return refuse(
            InvalidClass::BadPhone,
            format!("it has {c:?}, not a digit, white space or one of + - . ( ) /"),
        );
    }
    // Separators go too: libphonenumber is given '+' and digits only, where its ports agree.
    let digits: String = number_part
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+')
        .collect();
    let number = phonenumber::parse(region, &digits).map_err(|err| {
        (
            InvalidClass::BadPhone,
            format!("it does not parse as a phone number ({err})"),
        )
    })?;
    // Numbers dialled with an international access code ("00 44 ...", "011 44 ...") are
    // refused: libphonenumber's ports read some of them as different numbers, and a wrong
    // number is a match against someone else.
    if number.code().source() == phonenumber::country::Source::Idd {
        return refuse(
            InvalidClass::BadPhone,
            "it is dialled with an international access code: write it as +<country code><number>",
        );
    }
    if !phonenumber::is_valid(&number) {
        return refuse(
            InvalidClass::BadPhone,
            "it is not a valid number in its country's numbering plan".to_owned(),
        );
    }
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    if international {
        check_digits_kept(&digits, &e164, number.code().value())?;
    }
    Ok(e164)
}

/// A number written with '+' says every digit: libphonenumber may drop a '0' trunk prefix
/// written after the country code ("+44 (0) 7400 123456") and nothing else. Its ports
/// apply national rewriting rules to such numbers differently (one turns "+1 784 8263"
/// into "+1 784 784 8263"), so a rewritten number is refused rather than guessed.
fn check_digits_kept(written: &str, e164: &str, country_code: u16) -> Result<(), Refusal> {
    let written = written.trim_start_matches('+');
    let normal = e164.trim_start_matches('+');
    let code = country_code.to_string();
    let without_trunk_zero = written
        .strip_prefix(code.as_str())
        .and_then(|rest| rest.strip_prefix('0'))
        .map(|rest| format!("{code}{rest}"));
    if written == normal || without_trunk_zero.as_deref() == Some(normal) {
        return Ok(());
    }
    refuse(
        InvalidClass::BadPhone,
        format!("its digits are not a number as written: libphonenumber reads them as +{normal}"),
    )
}

fn normalize_username(trimmed: &str) -> Result<String, Refusal> {
    let Some((platform, name)) = trimmed.split_once(':') else {
        return refuse(
            InvalidClass::NoPlatform,
            "it has no platform scope: write it as <platform>:<name>, e.g. instagram:alice".to_owned(),
        );
    };
    let platform = platform.trim().to_ascii_lowercase();
    let platform_ok = !platform.is_empty()
        && platform.len() <= 64
        && platform
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if !platform_ok {
        return refuse(
            InvalidClass::BadPlatform,
            format!("the platform '{platform}' must be 1 to 64 of a-z, 0-9, '.', '-' and '_'"),
        );
    }
    let name = name.trim();
    let name = name.strip_prefix('@').unwrap_or(name);
    // NFKC, full case folding, NFKC again: folding can leave text unnormalised.
    let folded: String = caseless::default_case_fold_str(&name.nfkc().collect::<String>())
        .nfkc()
        .collect();
    if folded.is_empty() {
        return refuse(
            InvalidClass::EmptyName,
            "the name after the platform is empty".to_owned(),
        );
    }
    if has_space_or_control(&folded) {
        return refuse(
            InvalidClass::SpaceOrControl,
            "the name contains white space or control characters".to_owned(),
        );
    }
    if folded.len() > MAX_FREE_FORM_LEN {
        return refuse(
            InvalidClass::TooLong,
            format!("the name is longer than {MAX_FREE_FORM_LEN} bytes"),
        );
    }
    Ok(format!("{platform}:{folded}"))
}

fn normalize_device_id(trimmed: &str) -> Result<String, Refusal> {
    let lowered: String = trimmed.nfkc().collect::<String>().to_lowercase();
    // Hardware and advertising ids are hex written with assorted separators (MAC
    // addresses, UUIDs, IMEIs): drop the separators so every spelling agrees.
    let compact: String = lowered
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | '.' | ' '))
        .collect();
    let normal = if !compact.is_empty() && compact.chars().all(|c| c.is_ascii_hexdigit()) {
        compact
    } else {
        lowered
    };
    if has_space_or_control(&normal) {
        return refuse(
            InvalidClass::SpaceOrControl,
            "it contains white space or control characters".to_owned(),
        );
    }
    if normal.len() > MAX_FREE_FORM_LEN {
        return refuse(
            InvalidClass::TooLong,
            format!("it is longer than {MAX_FREE_FORM_LEN} bytes"),
        );
    }
    Ok(normal)
}

fn normalize_ip(trimmed: &str) -> Result<String, Refusal> {
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(trimmed);
    let address: IpAddr = unbracketed.parse().map_err(|_| {
        (
            InvalidClass::BadIp,
            "it is not an IPv4 address in dotted decimal or an IPv6 address".to_owned(),
        )
    })?;
    let canonical = match address {
        IpAddr::V4(v4) => v4.to_string(),
        // An IPv4-mapped address is the IPv4 host: give both spellings one digest.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
    };
    Ok(canonical)
}

fn normalize_other(trimmed: &str) -> Result<String, Refusal> {
    let normal: String = trimmed.nfc().collect();
    if normal.len() > MAX_FREE_FORM_LEN * 4 {
        return refuse(
            InvalidClass::TooLong,
            format!("it is longer than {} bytes", MAX_FREE_FORM_LEN * 4),
        );
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(kind: Kind, raw: &str) -> Result<String, String> {
        let options = NormalizeOptions {
            default_phone_region: Some(phonenumber::country::Id::GB),
        };
        normalize(kind, raw, &options).map_err(|err| err.to_string())
    }

    #[test]
    fn email_rules() {
        assert_eq!(
            norm(Kind::Email, "  Foo.Bar+x@Example.COM ").unwrap(),
            "foo.bar@example.com"
        );
        assert_eq!(norm(Kind::Email, "F.o.o+tag@GoogleMail.com").unwrap(), "foo@gmail.com");
        assert_eq!(norm(Kind::Email, "foo@example.com.").unwrap(), "foo@example.com");
        assert!(norm(Kind::Email, "foo.example.com").unwrap_err().contains("has no '@'"));
        assert!(
            norm(Kind::Email, "a@b@example.com")
                .unwrap_err()
                .contains("more than one '@'")
        );
        assert!(norm(Kind::Email, "+tag@example.com").unwrap_err().contains("plus-tag"));
        assert!(norm(Kind::Email, "foo@localhost").unwrap_err().contains("has no dot"));
        assert!(
            norm(Kind::Email, "foo bar@example.com")
                .unwrap_err()
                .contains("white space")
        );
        assert!(norm(Kind::Email, "").unwrap_err().contains("it is empty"));
    }

    #[test]
    fn phone_rules() {
        assert_eq!(norm(Kind::Phone, "+44 7911 123456").unwrap(), "+447911123456");
        assert_eq!(norm(Kind::Phone, "07911 123456").unwrap(), "+447911123456");
        assert_eq!(norm(Kind::Phone, "+1 (202) 555-0143").unwrap(), "+12025550143");
        assert!(
            norm(Kind::Phone, "not a number")
                .unwrap_err()
                .contains("invalid phone identifier")
        );
        assert!(norm(Kind::Phone, "+44 12").unwrap_err().contains("phone"));
        assert_eq!(
            norm(Kind::Phone, "+44 (0)7400-123456 ext. 12").unwrap(),
            "+447400123456"
        );
        assert!(
            norm(Kind::Phone, "+44 7400 123456\u{200b}")
                .unwrap_err()
                .contains("not a digit")
        );
        assert!(
            norm(Kind::Phone, "+44 \u{ff17}400 123456")
                .unwrap_err()
                .contains("other than ASCII 0-9")
        );
        assert!(
            norm(Kind::Phone, "00 44 7400 123456")
                .unwrap_err()
                .contains("international access code")
        );
        assert!(
            norm(Kind::Phone, "+1 784 8263")
                .unwrap_err()
                .contains("reads them as +17847848263")
        );
        let no_region = normalize(Kind::Phone, "07911 123456", &NormalizeOptions::default()).unwrap_err();
        assert_eq!(no_region.class, InvalidClass::NoRegion);
        assert!(no_region.reason.contains("no default region"), "{no_region}");
    }

    #[test]
    fn username_rules() {
        assert_eq!(norm(Kind::Username, "Instagram:@Alice").unwrap(), "instagram:alice");
        assert_eq!(norm(Kind::Username, "tiktok:STRASSE").unwrap(), "tiktok:strasse");
        assert_eq!(norm(Kind::Username, "tiktok:Straße").unwrap(), "tiktok:strasse");
        assert_eq!(
            norm(Kind::Username, "discord:ｆｕｌｌｗｉｄｔｈ").unwrap(),
            "discord:fullwidth"
        );
        assert!(norm(Kind::Username, "alice").unwrap_err().contains("no platform scope"));
        assert!(norm(Kind::Username, "in sta:alice").unwrap_err().contains("platform"));
        assert!(norm(Kind::Username, "x:").unwrap_err().contains("empty"));
    }

    #[test]
    fn device_id_rules() {
        assert_eq!(norm(Kind::DeviceId, "AA:BB:CC:00:11:22").unwrap(), "aabbcc001122");
        assert_eq!(
            norm(Kind::DeviceId, "123E4567-E89B-12D3-A456-426614174000").unwrap(),
            "123e4567e89b12d3a456426614174000"
        );
        assert_eq!(norm(Kind::DeviceId, "Android-ID_xyz").unwrap(), "android-id_xyz");
        assert!(norm(Kind::DeviceId, "a b\tc").unwrap_err().contains("white space"));
    }

    #[test]
    fn ip_rules() {
        assert_eq!(norm(Kind::IpAddress, "192.0.2.1").unwrap(), "192.0.2.1");
        assert_eq!(norm(Kind::IpAddress, "2001:DB8:0:0:0:0:0:1").unwrap(), "2001:db8::1");
        assert_eq!(norm(Kind::IpAddress, "[2001:db8::1]").unwrap(), "2001:db8::1");
        assert_eq!(norm(Kind::IpAddress, "::ffff:192.0.2.1").unwrap(), "192.0.2.1");
        assert!(norm(Kind::IpAddress, "300.1.1.1").unwrap_err().contains("not an IPv4"));
        assert!(norm(Kind::IpAddress, "010.0.0.1").is_err());
    }

    #[test]
    fn other_keeps_case_but_not_surrounding_space() {
        assert_eq!(norm(Kind::Other, "  Case Matters ").unwrap(), "Case Matters");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::digest::{Kind, NormalizeOptions};

    proptest! {
        #[test]
        fn any_text_normalises_or_is_refused_and_normal_forms_are_fixed_points(
            raw in "\\PC{0,80}",
            kind in proptest::sample::select(Kind::ALL.to_vec()),
        ) {
            let options = NormalizeOptions::default();
            if let Ok(normal) = normalize(kind, &raw, &options) {
                prop_assert_eq!(normalize(kind, &normal, &options).ok(), Some(normal.clone()), "{:?}", raw);
            }
        }

        #[test]
        fn any_bytes_as_text_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let text = String::from_utf8_lossy(&bytes);
            for kind in Kind::ALL {
                let _ = normalize(kind, &text, &NormalizeOptions::default());
            }
        }
    }
}
