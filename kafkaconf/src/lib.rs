//! librdkafka settings from the command line, the same for every encore program that talks to
//! Kafka (`encore-flow`'s consumers, `encore-gen`'s producer):
//!
//! * `--kafka-config FILE`: a client configuration file, `key=value` (or `key: value`) lines
//!   with `#` or `!` comments and blank lines, as in the `client.properties` files that managed
//!   Kafka services hand out. It keeps SASL passwords off the command line, where `ps` shows
//!   them.
//! * `--kafka-option KEY=VALUE` (repeatable).
//!
//! [`settings`] puts them in the order they apply: the program's own settings first (set by
//! the caller), then the file's, then the `--kafka-option`s, so the user always has the last
//! word. A `bootstrap.servers` line in the file must name the `--brokers` given, so that the
//! two cannot silently disagree; it is then dropped (`--brokers` sets it).
//!
//! Errors are one-line strings naming the flag, the file and the line, ready for a CLI's exit
//! message. Nothing here checks that librdkafka knows a key: it does that itself when the
//! client is created, with a message naming the key.

use std::path::Path;

/// A `key=value` pair of librdkafka settings.
pub type Setting = (String, String);

/// Parses one `--kafka-option`: `KEY=VALUE`, split at the first `=` (values may hold `=`);
/// the key is trimmed and must not be empty. Suits clap's `value_parser`.
pub fn parse_option(text: &str) -> Result<Setting, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Reads a `--kafka-config` file (see the crate docs). `brokers` is `--brokers` as given.
pub fn read_config(path: &Path, brokers: &str) -> Result<Vec<Setting>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("cannot read --kafka-config {}: {err}", path.display()))?;
    let mut settings = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let split = line.find(['=', ':']).map(|at| (line[..at].trim(), line[at + 1..].trim()));
        let (key, value) = match split {
            Some((key, value)) if !key.is_empty() => (key, value),
            _ => return Err(format!("{} line {}: expected key=value, got {line:?}", path.display(), number + 1)),
        };
        if key == "bootstrap.servers" {
            if value != brokers {
                return Err(format!("{} line {}: bootstrap.servers={value} differs from --brokers {brokers}", path.display(), number + 1));
            }
            continue;
        }
        settings.push((key.to_owned(), value.to_owned()));
    }
    Ok(settings)
}

/// The user's settings in the order they apply: the `--kafka-config` file's (if any), then the
/// `--kafka-option`s. The caller sets its own before these.
pub fn settings(brokers: &str, config: Option<&Path>, options: &[Setting]) -> Result<Vec<Setting>, String> {
    let mut settings = match config {
        Some(path) => read_config(path, brokers)?,
        None => Vec::new(),
    };
    settings.extend(options.iter().cloned());
    Ok(settings)
}

/// What to add to an "unreachable" error when `settings` authenticate with SASL. A broker
/// that rejects the credentials may just close the connection, which librdkafka reports as a
/// transport failure like any unreachable broker (Tansu 0.6 does so); the hint says to check
/// the credentials too. Empty without SASL.
pub fn unreachable_hint(settings: &[Setting]) -> &'static str {
    if settings.iter().any(|(key, _)| key.starts_with("sasl.")) {
        " (SASL is configured: a broker that rejects the credentials may close the connection, so check sasl.username and sasl.password too)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(pairs: &[(&str, &str)]) -> Vec<Setting> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_option_splits_at_the_first_equals_sign() {
        assert_eq!(parse_option(" sasl.password =a=b"), Ok(("sasl.password".into(), "a=b".into())));
        assert_eq!(parse_option("linger.ms="), Ok(("linger.ms".into(), String::new())));
        for bad in ["no-equals-sign", "=value", " =value", ""] {
            let err = parse_option(bad).unwrap_err();
            assert!(err.starts_with("expected KEY=VALUE"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_config_file_reads_like_client_properties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.properties");
        let text = "# from the service's console\n\nbootstrap.servers=b:9092\nsecurity.protocol = SASL_SSL\n\
                    ! another comment\nsasl.mechanisms: PLAIN\nsasl.password=a=b:c\n";
        std::fs::write(&path, text).unwrap();
        let want = pairs(&[("security.protocol", "SASL_SSL"), ("sasl.mechanisms", "PLAIN"), ("sasl.password", "a=b:c")]);
        assert_eq!(read_config(&path, "b:9092").unwrap(), want);

        let err = read_config(&path, "other:9092").unwrap_err();
        assert!(err.ends_with("line 3: bootstrap.servers=b:9092 differs from --brokers other:9092"), "{err}");
        std::fs::write(&path, "security.protocol\n").unwrap();
        let err = read_config(&path, "b:9092").unwrap_err();
        assert!(err.ends_with("line 1: expected key=value, got \"security.protocol\""), "{err}");
        let err = read_config(&dir.path().join("missing"), "b:9092").unwrap_err();
        assert!(err.starts_with("cannot read --kafka-config"), "{err}");
    }

    #[test]
    fn options_apply_after_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.properties");
        std::fs::write(&path, "security.protocol=SSL\nlinger.ms=5\n").unwrap();
        let options = pairs(&[("linger.ms", "50")]);
        let got = settings("b:9092", Some(&path), &options).unwrap();
        assert_eq!(got, pairs(&[("security.protocol", "SSL"), ("linger.ms", "5"), ("linger.ms", "50")]));
        assert_eq!(settings("b:9092", None, &options).unwrap(), options);
        assert!(settings("b:9092", Some(&dir.path().join("missing")), &options).is_err());
    }

    #[test]
    fn an_unreachable_broker_with_sasl_hints_at_the_credentials() {
        assert_eq!(unreachable_hint(&pairs(&[("security.protocol", "SSL")])), "");
        assert!(unreachable_hint(&pairs(&[("sasl.password", "x")])).contains("check sasl.username and sasl.password"));
    }
}
