//! The node file (`dkt node add -f`, a pipeline file's nodes): its YAML shape, and
//! the durations and labels it holds.

use super::*;

/// A node described in a YAML file (`dkt node run FILE.yml`, and the `nodes:` of a
/// pipeline file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    /// A name for the node (accepted wherever its ID is); not part of its ID.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels a worker must have.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Input sources.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Output sources.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Shell lines, run in order, stopping at the first failure.
    pub run: StringOrList,
    /// Shell command after success.
    #[serde(default)]
    pub on_success: Option<String>,
    /// Shell command after failure.
    #[serde(default)]
    pub on_failure: Option<String>,
    /// Retry a failed run on the same inputs: a count (`retry: 3`) or
    /// `{count: 3, backoff: 30s}`.
    #[serde(default)]
    pub retry: Option<RetryDecl>,
    /// What a run does when an output moved while it ran: `rerun` or `overwrite`
    /// (default: record the run `conflict`, publish nothing).
    #[serde(default)]
    pub on_conflict: Option<crate::model::OnConflict>,
    /// Run through bubblewrap (inputs read-only, no network, a clean environment).
    #[serde(default)]
    pub sandbox: bool,
    /// A sandboxed node may use the network.
    #[serde(default)]
    pub network: bool,
}

/// `retry:` of a node file: a count, or a count and a backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RetryDecl {
    /// `retry: 3`
    Count(u32),
    /// `retry: {count: 3, backoff: 30s}`
    Policy(crate::model::Retry),
}

/// One string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One line.
    One(String),
    /// Several lines.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a shell line or a list of shell lines (quote lines such as \"true\")")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(StringOrList::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StringOrList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl NodeFile {
    /// Parse a node file; errors name `file`, the line and the field.
    pub fn parse(file: &str, text: &str) -> Result<NodeFile> {
        yaml_serde::from_str(text).map_err(|e| Error::invalid("node file", file, e.to_string()))
    }

    /// The node it describes.
    pub fn to_spec(&self) -> Result<NodeSpec> {
        let lines = match &self.run {
            StringOrList::One(s) => vec![s.clone()],
            StringOrList::Many(v) => v.clone(),
        };
        if lines.is_empty() {
            return Err(Error::invalid("node file", "run", "`run` lists no command"));
        }
        let names = |v: &[String]| v.iter().map(|s| Name::new(s)).collect::<Result<Vec<_>>>();
        let mut spec = NodeSpec::new(Command::Script(lines));
        spec.labels = self.labels.clone();
        spec.inputs = names(&self.inputs)?;
        spec.outputs = names(&self.outputs)?;
        spec.on_success = self.on_success.clone();
        spec.on_failure = self.on_failure.clone();
        spec.on_conflict = self.on_conflict;
        spec.sandbox = self.sandbox;
        spec.network = self.network;
        if self.network && !self.sandbox {
            return Err(Error::invalid(
                "node file",
                "network",
                "`network: true` only means something with `sandbox: true` (a node that is not sandboxed has the network)",
            ));
        }
        spec.retry = match &self.retry {
            None => None,
            Some(RetryDecl::Count(count)) => Some(crate::model::Retry {
                count: *count,
                backoff: "0s".to_owned(),
            }),
            Some(RetryDecl::Policy(p)) => {
                parse_wait(&p.backoff).map_err(|_| {
                    Error::invalid(
                        "retry backoff",
                        &p.backoff,
                        "expected a duration such as 30s, 5m or 1h",
                    )
                })?;
                Some(p.clone())
            }
        };
        validate_labels(&spec.labels)?;
        Ok(spec)
    }
}

/// Labels are non-empty and made of letters, digits, `_`, `-`, `.`.
pub fn validate_labels(labels: &[String]) -> Result<()> {
    for l in labels {
        if l.is_empty() || !l.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c)) {
            return Err(Error::invalid(
                "label",
                l,
                "use letters, digits, '_', '-' and '.'",
            ));
        }
    }
    Ok(())
}

/// Parse a duration such as `90` (seconds), `90s`, `500ms`, `30m`, `1h30m`, `2h 15m` or
/// `1d`, through [`humantime`]; it must be more than zero.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let d = parse_wait(s)?;
    if d.is_zero() {
        return Err(Error::invalid("duration", s, "must be more than zero"));
    }
    Ok(d)
}

/// [`parse_duration`], where zero (`0s`) is allowed too (a backoff).
pub fn parse_wait(s: &str) -> Result<Duration> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        // A bare number is seconds, as it always was.
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| Error::invalid("duration", s, "the number is too large"));
    }
    humantime::parse_duration(t).map_err(|e| {
        Error::invalid(
            "duration",
            s,
            format!("{e}; expected a number with ms, s, m, h or d (e.g. 30s, 1h30m)"),
        )
    })
}
