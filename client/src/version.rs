//! Which installed `pg_commitq` versions this client works with.
//!
//! The extension never removes or incompatibly changes a SQL object within a
//! major version (an upgrade script only adds or compatibly replaces), so a
//! client can talk to any extension from the oldest version that has every
//! function it calls up to, not including, the next major version. That is
//! what lets a database be upgraded before or after the workers that use it.

use std::cmp::Ordering;

/// The version this client was built as (the workspace version, which is
/// also the extension version built from the same checkout).
pub const EXTENSION_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The oldest `pg_commitq` version that has every SQL function this client
/// calls. Raise it when the client starts calling a function (or a new
/// argument) that an older extension lacks.
pub const MIN_EXTENSION_VERSION: &str = "0.1.0";

/// A version `MAJOR.MINOR.PATCH`, with an optional `-PRE` release and an
/// ignored `+BUILD`, ordered as semantic versioning orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Ident>,
}

/// One dot-separated part of a pre-release: numbers sort numerically and
/// before words.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ident {
    Num(u64),
    Word(String),
}

impl Version {
    pub(crate) fn parse(s: &str) -> Option<Version> {
        let s = s.trim();
        let s = s.split_once('+').map_or(s, |(core, _build)| core);
        let (core, pre) = match s.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (s, None),
        };
        let mut nums = core.split('.').map(number);
        let (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) =
            (nums.next(), nums.next(), nums.next(), nums.next())
        else {
            return None;
        };
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => pre
                .split('.')
                .map(|part| match number(part) {
                    Some(n) => Some(Ident::Num(n)),
                    None if !part.is_empty()
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                    {
                        Some(Ident::Word(part.to_string()))
                    }
                    None => None,
                })
                .collect::<Option<Vec<_>>>()?,
        };
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }
}

/// A decimal number without sign or leading zeros (`0` itself allowed).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                // A release sorts after its own pre-releases.
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The versions a client built as `built` with oldest usable extension `min`
/// accepts, as text for error messages: `>= min, < next major`.
pub(crate) fn accepted_range(built: &str, min: &str) -> String {
    match Version::parse(built) {
        Some(b) => format!(">= {min}, < {}.0.0", b.major + 1),
        None => format!(">= {min}"),
    }
}

/// True when an extension at version `installed` serves a client built as
/// `built` whose oldest usable extension is `min`: `min <= installed` and
/// `installed` is in `built`'s major version or an earlier one. A
/// pre-release of the next major version (`1.0.0-rc.1` for a 0.x client)
/// is refused: it may already hold that version's breaking changes. An
/// unparsable version is refused.
pub(crate) fn accepts(installed: &str, built: &str, min: &str) -> bool {
    let (Some(installed), Some(built), Some(min)) = (
        Version::parse(installed),
        Version::parse(built),
        Version::parse(min),
    ) else {
        return false;
    };
    installed >= min && installed.major <= built.major
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn parses_release_pre_release_and_build() {
        assert_eq!(v("0.1.0"), v("0.1.0+build.7"));
        assert_eq!(v(" 1.2.3 ").major, 1);
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.x",
            "1.2.3-",
            "1.2.3-a..b",
            "v1.2.3",
            "1.-2.3",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn orders_numerically_not_as_text() {
        assert!(v("0.10.0") > v("0.9.0"));
        assert!(v("0.2.10") > v("0.2.9"));
        assert!(v("10.0.0") > v("9.99.99"));
        assert!(v("1.0.0") > v("1.0.0-rc.1"));
        assert!(v("1.0.0-rc.2") > v("1.0.0-rc.1"));
        assert!(v("1.0.0-rc.10") > v("1.0.0-rc.9"));
        assert!(v("1.0.0-beta") > v("1.0.0-alpha"));
        assert!(v("1.0.0-alpha") > v("1.0.0-1"));
    }

    #[test]
    fn a_client_accepts_its_minimum_up_to_the_next_major() {
        let (built, min) = ("0.2.0", "0.1.0");
        for ok in [
            "0.1.0", "0.1.7", "0.2.0", "0.2.1", "0.3.0", "0.10.0", "0.99.0",
        ] {
            assert!(accepts(ok, built, min), "{ok} should be accepted");
        }
        for refused in [
            "0.0.9",
            "0.1.0-rc.1",
            "1.0.0",
            "1.0.0-rc.1",
            "2.3.0",
            "0.2",
            "garbage",
        ] {
            assert!(!accepts(refused, built, min), "{refused} should be refused");
        }
    }

    #[test]
    fn the_0_1_0_client_accepts_a_0_2_0_extension() {
        // What makes rolling deploys work: workers built at 0.1.0 keep
        // running while the database is upgraded to 0.2.0, and back.
        assert!(accepts("0.2.0", "0.1.0", "0.1.0"));
        assert!(accepts("0.1.0", "0.2.0", "0.1.0"));
    }

    #[test]
    fn a_client_of_a_later_major_keeps_its_own_floor() {
        let (built, min) = ("2.4.0", "2.1.0");
        assert!(accepts("2.1.0", built, min));
        assert!(accepts("2.9.3", built, min));
        assert!(!accepts("2.0.5", built, min));
        assert!(!accepts("1.9.0", built, min));
        assert!(!accepts("3.0.0", built, min));
        assert_eq!(accepted_range(built, min), ">= 2.1.0, < 3.0.0");
    }

    #[test]
    fn this_build_accepts_its_own_version_and_its_minimum() {
        assert!(accepts(
            EXTENSION_VERSION,
            EXTENSION_VERSION,
            MIN_EXTENSION_VERSION
        ));
        assert!(accepts(
            MIN_EXTENSION_VERSION,
            EXTENSION_VERSION,
            MIN_EXTENSION_VERSION
        ));
        assert!(v(MIN_EXTENSION_VERSION) <= v(EXTENSION_VERSION));
    }
}
