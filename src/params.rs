//! Stage parameters. Each stage declares its parameters with defaults; a pipeline file and
//! `--set stage.key=value` override them. The resolved values are recorded in the manifest and are
//! part of a stage run's identity, so changing one reruns the stage.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Resolved parameters of one stage, in declaration order.
pub(crate) type Params = Map<String, Value>;

/// One parameter a stage accepts.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub key: &'static str,
    pub default: Value,
    pub help: &'static str,
    /// Values allowed beyond the default's type, checked when the pipeline loads.
    pub allowed: Allowed,
    /// Whether the value is part of the stage run's identity (a change reruns the stage). Not
    /// for settings that steer the runner and leave the stage's outputs alone (retention).
    pub identity: bool,
}

/// The values a parameter takes beyond its type: a numeric range or a closed set of words.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    Any,
    /// A number from `min` (excluded when `min_open`) to `max`, both ends included otherwise.
    Range {
        min: f64,
        min_open: bool,
        max: f64,
    },
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these words, at least one.
    ListOf(&'static [&'static str]),
}

impl ParamSpec {
    pub fn new(key: &'static str, default: impl Into<Value>, help: &'static str) -> Self {
        Self {
            key,
            default: default.into(),
            help,
            allowed: Allowed::Any,
            identity: true,
        }
    }

    /// A setting of the runner, outside the stage run's identity: changing it reruns nothing.
    pub(crate) fn runner_only(mut self) -> Self {
        self.identity = false;
        self
    }

    /// A number ≥ `min`.
    pub(crate) fn at_least(self, min: f64) -> Self {
        self.range(min, false, f64::INFINITY)
    }

    /// A number > `min`.
    pub fn above(self, min: f64) -> Self {
        self.range(min, true, f64::INFINITY)
    }

    /// A number in `[min, max]`.
    pub fn between(self, min: f64, max: f64) -> Self {
        self.range(min, false, max)
    }

    /// A number in `(min, max]`.
    pub(crate) fn above_up_to(self, min: f64, max: f64) -> Self {
        self.range(min, true, max)
    }

    fn range(mut self, min: f64, min_open: bool, max: f64) -> Self {
        self.allowed = Allowed::Range { min, min_open, max };
        self
    }

    /// One of `words`.
    pub(crate) fn one_of(mut self, words: &'static [&'static str]) -> Self {
        self.allowed = Allowed::OneOf(words);
        self
    }

    /// A comma-separated list of `words`.
    pub(crate) fn list_of(mut self, words: &'static [&'static str]) -> Self {
        self.allowed = Allowed::ListOf(words);
        self
    }
}

impl Allowed {
    /// `None` when `value` (already of the right type) is allowed, else what is.
    fn refuse(&self, value: &Value) -> Option<String> {
        match (self, value) {
            (Allowed::Range { min, min_open, max }, Value::Number(n)) => {
                let v = n.as_f64().unwrap_or(f64::NAN);
                let low_ok = if *min_open { v > *min } else { v >= *min };
                (!(low_ok && v <= *max)).then(|| format!("expected {self}, got {value}"))
            }
            (Allowed::OneOf(words), Value::String(s)) => {
                (!words.contains(&s.as_str())).then(|| format!("expected {self}, got {value}"))
            }
            (Allowed::ListOf(words), Value::String(s)) => {
                let items: Vec<&str> = s.split(',').map(str::trim).collect();
                let bad = items.iter().find(|i| !words.contains(i));
                bad.map(|item| format!("{item:?} is not allowed: expected {self}"))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allowed::Any => write!(f, "any value of its type"),
            Allowed::Range { min, min_open, max } => {
                let op = if *min_open { ">" } else { "≥" };
                if max.is_infinite() {
                    write!(f, "a number {op} {min}")
                } else {
                    write!(f, "a number {op} {min} and ≤ {max}")
                }
            }
            Allowed::OneOf(words) => write!(f, "one of {}", words.join(", ")),
            Allowed::ListOf(words) => write!(f, "a comma list of {}", words.join(", ")),
        }
    }
}

/// A `--set` override: `stage.key=value`, or `seed=N` for the run seed.
#[derive(Debug, Clone, PartialEq)]
pub struct SetOverride {
    pub stage: Option<String>,
    pub key: String,
    pub value: Value,
}

impl std::str::FromStr for SetOverride {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (lhs, rhs) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s:?}: expected key=value, e.g. corpus.max_docs=100"))?;
        let lhs = lhs.trim();
        let (stage, key) = match lhs.split_once('.') {
            Some((stage, key)) => (Some(stage.to_string()), key.to_string()),
            None => (None, lhs.to_string()),
        };
        if key.is_empty() || stage.as_deref() == Some("") {
            return Err(format!("--set {s:?}: empty key"));
        }
        Ok(SetOverride {
            stage,
            key,
            value: parse_value(rhs.trim()),
        })
    }
}

/// Reads a command-line value as TOML (numbers, booleans, quoted strings, arrays); anything that
/// is not TOML is taken as a bare string, so paths need no quoting.
pub(crate) fn parse_value(text: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut table) => table
            .remove("v")
            .map(toml_to_json)
            .unwrap_or(Value::String(text.to_string())),
        Err(_) => Value::String(text.to_string()),
    }
}

pub(crate) fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Defaults, then the pipeline's values, then `--set` overrides; unknown keys and values of the
/// wrong type are refused with the key named.
/// Stage parameters a `--set key=value` without a stage sets in every stage that declares them.
pub(crate) const RUN_WIDE_KEYS: [&str; 3] = ["device", "dtype", "tool_format"];

pub fn resolve(
    stage: &str,
    specs: &[ParamSpec],
    pipeline: Option<&Map<String, Value>>,
    sets: &[SetOverride],
) -> Result<Params> {
    let mut params: Params = specs
        .iter()
        .map(|s| (s.key.to_string(), s.default.clone()))
        .collect();
    // `--set device=cuda` reaches every stage that has a `device` (likewise `dtype`); a
    // stage's own `--set stage.device=…` comes later and wins.
    let run_wide = sets.iter().filter(|s| {
        s.stage.is_none()
            && RUN_WIDE_KEYS.contains(&s.key.as_str())
            && specs.iter().any(|spec| spec.key == s.key)
    });
    let from_sets = sets
        .iter()
        .filter(|s| s.stage.as_deref() == Some(stage))
        .map(|s| (&s.key, &s.value));
    let run_wide = run_wide.map(|s| (&s.key, &s.value));
    for (key, value) in pipeline
        .into_iter()
        .flatten()
        .chain(run_wide)
        .chain(from_sets)
    {
        let full = format!("{stage}.{key}");
        let Some(spec) = specs.iter().find(|s| s.key == key) else {
            let known: Vec<_> = specs.iter().map(|s| s.key).collect();
            return Err(Error::param(
                full,
                format!(
                    "unknown parameter (stage {stage} takes: {})",
                    known.join(", ")
                ),
            ));
        };
        let value = coerce(&full, &spec.default, value)?;
        if let Some(why) = spec.allowed.refuse(&value) {
            return Err(Error::param(full, why));
        }
        params.insert(key.clone(), value);
    }
    Ok(params)
}

/// `value` as the type of `default`. Integer parameters are counts, sizes and indices: a
/// negative one is refused here, before any stage runs (stages read them as unsigned).
fn coerce(key: &str, default: &Value, value: &Value) -> Result<Value> {
    let ok = match (default, value) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Bool(_), Value::Bool(_)) => true,
        (Value::Number(d), Value::Number(v)) => d.is_f64() || v.is_u64(),
        (Value::Array(_), Value::Array(_)) => true,
        _ => false,
    };
    if ok {
        if let (Value::Number(d), Value::Number(v)) = (default, value)
            && d.is_f64()
        {
            return Ok(Value::from(v.as_f64().unwrap_or_default()));
        }
        Ok(value.clone())
    } else {
        Err(Error::param(
            key,
            format!(
                "expected {} like {default}, got {value}",
                kind_name(default)
            ),
        ))
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "a non-negative integer",
        Value::Array(_) => "a list",
        _ => "a value",
    }
}

/// Typed access to resolved params. The stage declared the key, so a missing key or wrong type
/// is a programming error in the stage, not user input.
pub(crate) trait ParamsExt {
    fn str(&self, key: &str) -> &str;
    fn u64(&self, key: &str) -> u64;
    fn f64(&self, key: &str) -> f64;
    fn bool(&self, key: &str) -> bool;
}

impl ParamsExt for Params {
    fn str(&self, key: &str) -> &str {
        self.get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("stage declared string parameter {key}"))
    }

    fn u64(&self, key: &str) -> u64 {
        self.get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("stage declared integer parameter {key}"))
    }

    fn f64(&self, key: &str) -> f64 {
        self.get(key)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("stage declared number parameter {key}"))
    }

    fn bool(&self, key: &str) -> bool {
        self.get(key)
            .and_then(Value::as_bool)
            .unwrap_or_else(|| panic!("stage declared boolean parameter {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::new("source", "builtin", ""),
            ParamSpec::new("max_docs", 0, ""),
            ParamSpec::new("temperature", 1.0, ""),
        ]
    }

    #[test]
    fn set_parses_stage_key_and_typed_value() {
        let s: SetOverride = "corpus.max_docs=100".parse().unwrap();
        assert_eq!(s.stage.as_deref(), Some("corpus"));
        assert_eq!(s.key, "max_docs");
        assert_eq!(s.value, Value::from(100));
        let s: SetOverride = "corpus.source=/tmp/x.jsonl".parse().unwrap();
        assert_eq!(s.value, Value::from("/tmp/x.jsonl"));
        let s: SetOverride = "seed=7".parse().unwrap();
        assert_eq!(s.stage, None);
        assert!("nokey".parse::<SetOverride>().is_err());
    }

    #[test]
    fn resolve_applies_pipeline_then_sets_and_refuses_unknown_or_mistyped() {
        let mut pipeline = Map::new();
        pipeline.insert("max_docs".into(), Value::from(5));
        let sets = vec!["corpus.temperature=2".parse().unwrap()];
        let p = resolve("corpus", &specs(), Some(&pipeline), &sets).unwrap();
        assert_eq!(p["max_docs"], Value::from(5));
        assert_eq!(p["temperature"], Value::from(2.0));
        assert_eq!(p["source"], Value::from("builtin"));

        let bad = vec!["corpus.colour=red".parse().unwrap()];
        let err = resolve("corpus", &specs(), None, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corpus.colour") && err.contains("unknown"),
            "{err}"
        );
        let bad = vec!["corpus.max_docs=lots".parse().unwrap()];
        let err = resolve("corpus", &specs(), None, &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a non-negative integer"), "{err}");
        // A negative count (judge.real_items=-1 used to reach an unsigned read and panic).
        let bad = vec!["corpus.max_docs=-1".parse().unwrap()];
        let err = resolve("corpus", &specs(), None, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corpus.max_docs") && err.contains("non-negative") && err.contains("-1"),
            "{err}"
        );
    }

    #[test]
    fn ranges_and_closed_sets_are_checked_with_the_key_and_what_is_allowed() {
        let specs = vec![
            ParamSpec::new("top_p", 1.0, "").above_up_to(0.0, 1.0),
            ParamSpec::new("batch_size", 32, "").at_least(1.0),
            ParamSpec::new("verifier", "grm", "").one_of(&["grm", "rule", "majority"]),
            ParamSpec::new("train_roles", "policy", "").list_of(&["policy", "grm"]),
        ];
        let refused = |set: &str| {
            let sets = vec![set.parse().unwrap()];
            resolve("s", &specs, None, &sets).unwrap_err().to_string()
        };
        let err = refused("s.top_p=0");
        assert!(
            err.contains("s.top_p") && err.contains("> 0 and ≤ 1"),
            "{err}"
        );
        assert!(refused("s.top_p=1.5").contains("got 1.5"));
        let err = refused("s.batch_size=0");
        assert!(err.contains("s.batch_size") && err.contains("≥ 1"), "{err}");
        let err = refused("s.verifier=gmr");
        assert!(
            err.contains("s.verifier") && err.contains("one of grm, rule, majority"),
            "{err}"
        );
        let err = refused("s.train_roles=policy,judge");
        assert!(
            err.contains("\"judge\"") && err.contains("policy, grm"),
            "{err}"
        );
        assert!(refused("s.train_roles=").contains("s.train_roles"));
        let sets: Vec<SetOverride> = vec![
            "s.top_p=0.9".parse().unwrap(),
            "s.batch_size=1".parse().unwrap(),
            "s.verifier=rule".parse().unwrap(),
            "s.train_roles=grm, policy".parse().unwrap(),
        ];
        let p = resolve("s", &specs, None, &sets).unwrap();
        assert_eq!(p["verifier"], Value::from("rule"));
    }

    #[test]
    fn run_wide_device_reaches_stages_that_declare_it_and_a_stage_set_wins() {
        let mut with_device = specs();
        with_device.push(ParamSpec::new("device", "cpu", ""));
        let sets: Vec<SetOverride> = vec!["device=cuda".parse().unwrap()];
        let p = resolve("rollout", &with_device, None, &sets).unwrap();
        assert_eq!(p["device"], Value::from("cuda"));
        // A stage without a `device` ignores it instead of failing.
        let p = resolve("corpus", &specs(), None, &sets).unwrap();
        assert!(!p.contains_key("device"));
        let sets: Vec<SetOverride> = vec![
            "rollout.device=cuda:1".parse().unwrap(),
            "device=cuda".parse().unwrap(),
        ];
        let p = resolve("rollout", &with_device, None, &sets).unwrap();
        assert_eq!(p["device"], Value::from("cuda:1"));
    }
}
