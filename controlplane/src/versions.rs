//! Function versions and aliases, the pure part: what "NAME:QUALIFIER"
//! means, which version an alias sends a call to, which versions are
//! kept. The records live in etcd (`Kind::FunctionVersion`,
//! `Kind::FunctionAlias`); the API handlers read and write them.
//!
//! Every deploy or configuration update makes a version (the function's
//! `version` field, counted from 1). Its record is written with the
//! function's in one transaction and never changed after: a call names its
//! version when it is accepted, and runs that version even if the function
//! moved on meanwhile, or after a leader change.

use std::collections::BTreeSet;

use faas_proto::v1::FunctionAlias;

use crate::error::ApiError;

/// The qualifier that names the current version, as Lambda's `$LATEST`
/// (which is not a name here: '$' is not in the name rule).
pub const LATEST: &str = "latest";

/// What follows the ':' in "NAME:QUALIFIER".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier {
    /// No qualifier, or "latest": the current version.
    Latest,
    /// A version number.
    Version(u64),
    /// An alias's name.
    Alias(String),
}

impl Qualifier {
    /// A qualifier given on its own (GetFunctionRequest.qualifier).
    pub fn parse(text: &str) -> Result<Qualifier, ApiError> {
        if text.is_empty() || text == LATEST {
            return Ok(Qualifier::Latest);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u64>() {
                Ok(v) if v > 0 => Ok(Qualifier::Version(v)),
                _ => Err(ApiError::InvalidArgument(format!(
                    "invalid version {text:?}: versions are counted from 1"
                ))),
            };
        }
        check_alias_name(text)?;
        Ok(Qualifier::Alias(text.to_string()))
    }
}

/// "NAME" or "NAME:QUALIFIER": the name (checked) and the qualifier.
pub fn split(function: &str) -> Result<(&str, Qualifier), ApiError> {
    let (name, qualifier) = match function.split_once(':') {
        Some((name, qualifier)) => {
            if qualifier.is_empty() {
                return Err(ApiError::InvalidArgument(format!(
                    "invalid function {function:?}: nothing after ':' (use NAME, NAME:VERSION or NAME:ALIAS)"
                )));
            }
            (name, Qualifier::parse(qualifier)?)
        }
        None => (function, Qualifier::Latest),
    };
    crate::error::check_name("function", name)?;
    Ok((name, qualifier))
}

/// An alias's name: the name rule, not all digits (those are versions),
/// not "latest".
pub fn check_alias_name(name: &str) -> Result<(), ApiError> {
    crate::error::check_name("alias", name)?;
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidArgument(format!(
            "invalid alias name {name:?}: all digits names a version"
        )));
    }
    if name == LATEST {
        return Err(ApiError::InvalidArgument(format!(
            "invalid alias name {name:?}: it names the current version"
        )));
    }
    Ok(())
}

/// Checks an alias's routing: a version, and optionally a second one with
/// a weight strictly between 0 and 1.
pub fn check_routing(
    version: u64,
    additional_version: u64,
    additional_weight: f64,
) -> Result<(), ApiError> {
    if version == 0 {
        return Err(ApiError::InvalidArgument(
            "an alias needs a version (counted from 1)".into(),
        ));
    }
    match (additional_version, additional_weight) {
        (0, 0.0) => Ok(()),
        (0, _) => Err(ApiError::InvalidArgument(
            "an additional weight needs an additional version".into(),
        )),
        (v, _) if v == version => Err(ApiError::InvalidArgument(format!(
            "the additional version is the alias's version ({v}): give another one, or none"
        ))),
        (_, w) if w > 0.0 && w < 1.0 => Ok(()),
        (_, w) => Err(ApiError::InvalidArgument(format!(
            "additional weight {w} is outside (0, 1): the share of calls the additional version gets"
        ))),
    }
}

/// The version an alias sends a call to, given a draw uniform in [0, 1).
pub fn pick(alias: &FunctionAlias, draw: f64) -> u64 {
    if alias.additional_version != 0 && draw < alias.additional_weight {
        alias.additional_version
    } else {
        alias.version
    }
}

/// The versions to delete when `kept` (every version that has a record,
/// the current one among them) holds more than `keep`: the oldest, never
/// the current one nor one an alias names.
pub fn to_prune(
    kept: &BTreeSet<u64>,
    current: u64,
    keep: usize,
    aliased: &BTreeSet<u64>,
) -> Vec<u64> {
    let excess = kept.len().saturating_sub(keep.max(1));
    kept.iter()
        .copied()
        .filter(|v| *v != current && !aliased.contains(v))
        .take(excess)
        .collect()
}

/// The versions aliases name.
pub fn aliased<'a>(aliases: impl IntoIterator<Item = &'a FunctionAlias>) -> BTreeSet<u64> {
    aliases
        .into_iter()
        .flat_map(|a| [a.version, a.additional_version])
        .filter(|v| *v != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers() {
        assert_eq!(split("hello").unwrap(), ("hello", Qualifier::Latest));
        assert_eq!(split("hello:latest").unwrap(), ("hello", Qualifier::Latest));
        assert_eq!(
            split("hello:12").unwrap(),
            ("hello", Qualifier::Version(12))
        );
        assert_eq!(
            split("hello:live").unwrap(),
            ("hello", Qualifier::Alias("live".into()))
        );
        assert_eq!(
            split("hello:v2-canary").unwrap().1,
            Qualifier::Alias("v2-canary".into())
        );
        for bad in [
            "hello:",
            "hello:0",
            "hello:Live",
            "hello:a:b",
            ":live",
            "Hello:1",
            "hello:99999999999999999999999",
            "hello:-x",
        ] {
            assert!(split(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn alias_names() {
        assert!(check_alias_name("live").is_ok());
        assert!(check_alias_name("v2").is_ok());
        assert!(check_alias_name("42").is_err());
        assert!(check_alias_name("latest").is_err());
        assert!(check_alias_name("with space").is_err());
        assert!(check_alias_name("").is_err());
    }

    #[test]
    fn routing_rules() {
        assert!(check_routing(1, 0, 0.0).is_ok());
        assert!(check_routing(1, 2, 0.1).is_ok());
        assert!(check_routing(0, 0, 0.0).is_err());
        assert!(check_routing(1, 0, 0.5).is_err());
        assert!(check_routing(1, 1, 0.5).is_err());
        assert!(check_routing(1, 2, 0.0).is_err());
        assert!(check_routing(1, 2, 1.0).is_err());
        assert!(check_routing(1, 2, f64::NAN).is_err());
        assert!(check_routing(1, 2, -0.1).is_err());
    }

    #[test]
    fn an_alias_splits_by_its_weight() {
        let alias = FunctionAlias {
            version: 3,
            additional_version: 4,
            additional_weight: 0.25,
            ..Default::default()
        };
        let draws = (0..1000).map(|i| i as f64 / 1000.0);
        let to_4 = draws.filter(|d| pick(&alias, *d) == 4).count();
        assert_eq!(to_4, 250);
        let single = FunctionAlias {
            version: 3,
            ..Default::default()
        };
        assert_eq!(pick(&single, 0.0), 3);
        assert_eq!(pick(&single, 0.99), 3);
    }

    #[test]
    fn pruning_keeps_the_newest_the_current_and_the_aliased() {
        let kept: BTreeSet<u64> = (1..=12).collect();
        let aliased: BTreeSet<u64> = [2].into();
        // 12 kept, 10 allowed: the two oldest not aliased go.
        assert_eq!(to_prune(&kept, 12, 10, &aliased), vec![1, 3]);
        assert!(to_prune(&kept, 12, 12, &aliased).is_empty());
        // Everything old is aliased: nothing can go, the limit is exceeded.
        let all: BTreeSet<u64> = (1..=11).collect();
        assert_eq!(to_prune(&kept, 12, 1, &all), Vec::<u64>::new());
        // A rollback makes the current version the newest: never pruned.
        let few: BTreeSet<u64> = [1, 2].into();
        assert_eq!(to_prune(&few, 2, 1, &BTreeSet::new()), vec![1]);
    }
}
