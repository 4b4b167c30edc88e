//! The scope of a run's command: `${SOURCE:FIELD}` variables, private values and
//! secrets, the plan of its steps and its environment.

use super::*;

impl Project {
    /// Check every `${...}` of the node's command (and script file) against the fields of
    /// its sources and the known variables, without running anything.
    pub fn check_variables(&self, node: &NodeSpec) -> Result<()> {
        let snap = self.store().snapshot()?;
        self.check_variables_with(node, |name| read_source(&snap, name))
    }

    /// [`Project::check_variables`] with the node's sources looked up by `lookup` (so
    /// that sources not recorded yet, as in a pipeline file, can be checked too).
    pub(crate) fn check_variables_with(
        &self,
        node: &NodeSpec,
        lookup: impl Fn(&Name) -> Result<SourceSpec>,
    ) -> Result<()> {
        let mut scope = Scope::default();
        for name in node.inputs.iter().chain(&node.outputs) {
            let spec = lookup(name)?;
            let source = self.open_source(&spec)?;
            let fields = source.fields(spec.current(), Path::new("/nonexistent"))?;
            scope.add(name, fields)?;
        }
        self.add_private(&mut scope);
        self.plan(node, &scope, None).map(|_| ())
    }

    /// The sandbox a run of `node` executes in (`sandbox: true`, `--sandbox`): the
    /// project's directory read-only with its `.dkt` hidden, the inputs (`inputs`) and
    /// the scratch area's rendered script read-only, `writable` (the outputs' staging
    /// directories) and the work directory writable, the network only if the node
    /// declares it. `env` becomes the whole environment: it gets `PATH` (dkt's own) and
    /// `HOME`/`TMPDIR` (`/tmp`), nothing else of dkt's environment.
    pub(crate) fn sandbox_view(
        &self,
        node: &NodeSpec,
        scratch: &Path,
        work: &Path,
        inputs: Vec<PathBuf>,
        mut writable: Vec<PathBuf>,
        env: &mut Vec<(String, String)>,
    ) -> crate::process::Sandbox {
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let mut read_only: Vec<PathBuf> = inputs.iter().map(|p| real(p)).collect();
        read_only.push(real(&scratch.join("script")));
        writable.push(work.to_owned());
        let path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
        env.push(("PATH".to_owned(), path));
        env.push(("HOME".to_owned(), "/tmp".to_owned()));
        env.push(("TMPDIR".to_owned(), "/tmp".to_owned()));
        crate::process::Sandbox {
            visible: vec![real(self.root())],
            hide: vec![real(self.dkt_dir())],
            read_only,
            writable: writable.iter().map(|p| real(p)).collect(),
            network: node.network,
            trace: None,
        }
    }

    pub(crate) fn add_private(&self, scope: &mut Scope) {
        for (k, v) in &self.config().vars {
            scope.private.insert(k.clone(), v.clone());
        }
        for (k, v) in self.secrets().iter() {
            if crate::config::KIND_CREDENTIALS.contains(&k) {
                scope.credentials.insert(k.to_owned());
                continue;
            }
            scope.private.insert(k.to_owned(), v.to_owned());
        }
    }

    /// The processes to run, as argv lists; script files are rendered into `scratch`
    /// (with `None`, only checked).
    pub(crate) fn plan(
        &self,
        node: &NodeSpec,
        scope: &Scope,
        scratch: Option<&Path>,
    ) -> Result<Vec<Vec<String>>> {
        plan_steps(
            &node.command,
            self.node_script(node)?.as_deref(),
            scope,
            scratch,
        )
    }

    /// The recorded content of the node's script file (never today's file); a node
    /// defined before scripts were recorded (or being checked before it is defined) reads
    /// the file.
    pub(super) fn node_script(&self, node: &NodeSpec) -> Result<Option<String>> {
        if !matches!(&node.command, Command::Argv(_)) {
            return Ok(None);
        }
        Ok(match self.script_content(node)? {
            Some(text) => Some(text),
            None => self
                .script_file(node)?
                .map(|(_, content)| String::from_utf8(content).unwrap_or_default()),
        })
    }
}

/// The processes to run for `command`, as argv lists: shell lines through `sh -c`, a
/// script (its content `script`) rendered into `scratch` (with `None`, only checked).
pub(crate) fn plan_steps(
    command: &Command,
    script: Option<&str>,
    scope: &Scope,
    scratch: Option<&Path>,
) -> Result<Vec<Vec<String>>> {
    match command {
        Command::Script(lines) => lines
            .iter()
            .map(|l| Ok(vec!["sh".into(), "-c".into(), scope.rewrite(l)?]))
            .collect(),
        Command::Argv(argv) => {
            let first = argv
                .first()
                .ok_or_else(|| Error::invalid("command", "", "empty command"))?;
            if let Some(text) = script {
                let rendered = scope.rewrite(text)?;
                let copy = scratch.unwrap_or(Path::new("/nonexistent")).join("script");
                if scratch.is_some() {
                    std::fs::write(&copy, rendered).at(&copy)?;
                }
                let mut out = if text.starts_with("#!") {
                    use std::os::unix::fs::PermissionsExt;
                    if scratch.is_some() {
                        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                            .at(&copy)?;
                    }
                    vec![copy.display().to_string()]
                } else {
                    vec!["sh".into(), copy.display().to_string()]
                };
                for a in &argv[1..] {
                    out.push(scope.substitute(a)?);
                }
                Ok(vec![out])
            } else if argv.len() == 1 {
                Ok(vec![vec!["sh".into(), "-c".into(), scope.rewrite(first)?]])
            } else {
                Ok(vec![argv
                    .iter()
                    .map(|a| scope.substitute(a))
                    .collect::<Result<_>>()?])
            }
        }
    }
}

/// How a run's steps ended, when not all of them succeeded.
#[derive(Debug)]
pub(crate) enum StepsEnded {
    /// A step failed: its exit code, or what happened.
    Failed {
        code: Option<i32>,
        error: Option<String>,
    },
    /// The run was cancelled.
    Cancelled,
}

impl Project {
    /// The environment of a run's command: `DKT_PROJECT_ROOT`, `DKT_RUN_ID` and
    /// `DKT_NODE_ID`, then the scope's variables, then the private values it uses (the
    /// same for a run and for its reproduction).
    pub(crate) fn run_env(
        &self,
        run: RunId,
        node: NodeId,
        scope: &Scope,
        private: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (
                "DKT_PROJECT_ROOT".to_owned(),
                self.root().display().to_string(),
            ),
            ("DKT_RUN_ID".to_owned(), run.to_hex()),
            ("DKT_NODE_ID".to_owned(), node.to_hex()),
        ];
        env.extend(scope.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(private);
        env
    }
}

/// Run `steps` in order in `work`, stopping at the first that does not succeed; `None`
/// when all succeeded.
pub(crate) async fn run_steps(
    steps: &[Vec<String>],
    work: &Path,
    env: &[(String, String)],
    sandbox: Option<&crate::process::Sandbox>,
    timeout: Option<Duration>,
    cancel: &tokio_util::sync::CancellationToken,
    sink: &crate::process::Sink,
) -> Option<StepsEnded> {
    for step in steps {
        let ended = crate::process::run(
            crate::process::Step {
                argv: step,
                cwd: work,
                env: env.to_vec(),
                sandbox,
            },
            timeout,
            cancel,
            sink,
        )
        .await;
        match ended {
            crate::process::Ended::Exited(status) if status.success() => {}
            crate::process::Ended::Exited(status) => {
                use std::os::unix::process::ExitStatusExt;
                let error = status.signal().map(|s| format!("killed by signal {s}"));
                return Some(StepsEnded::Failed {
                    code: status.code(),
                    error,
                });
            }
            crate::process::Ended::NotStarted(error) => {
                return Some(StepsEnded::Failed {
                    code: None,
                    error: Some(error),
                })
            }
            crate::process::Ended::TimedOut(t) => {
                let shown = format!("{}s", t.as_secs());
                sink.note(&format!(
                    "[dkt: timed out after {shown}; process group killed]"
                ));
                return Some(StepsEnded::Failed {
                    code: None,
                    error: Some(format!("timed out after {shown}")),
                });
            }
            crate::process::Ended::Cancelled => {
                sink.note("[dkt: cancelled (SIGINT/SIGTERM); process group ended]");
                return Some(StepsEnded::Cancelled);
            }
        }
    }
    None
}

/// An output being staged: its name, its source, its staging directory and the version
/// the run started from.
pub(crate) type Staged = (Name, Arc<dyn Source>, PathBuf, Option<crate::Version>);

/// The variables of a run.
#[derive(Default)]
pub(crate) struct Scope {
    /// `${SOURCE:FIELD}` -> environment variable name.
    names: BTreeMap<(String, String), String>,
    /// Exported variables `DKT_SOURCE_FIELD` -> value.
    pub(crate) env: BTreeMap<String, String>,
    /// `${NAME}` private variables and secrets.
    pub(crate) private: BTreeMap<String, String>,
    /// The names of the kinds' credentials held as secrets (never given to a command).
    credentials: std::collections::BTreeSet<String>,
    /// The private names the command referred to (filled while planning).
    used: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Which variable name came from which `SOURCE:FIELD`, to detect collisions.
    owners: BTreeMap<String, String>,
}

/// `DKT_<SOURCE>_<FIELD>`: upper case, other characters as `_`.
pub fn env_name(source: &str, field: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("DKT_{}_{}", clean(source), clean(field))
}

impl Scope {
    pub(crate) fn add(&mut self, source: &Name, fields: Fields) -> Result<()> {
        for (field, value) in fields {
            let var = env_name(source.as_str(), &field);
            let owner = format!("{source}:{field}");
            if let Some(other) = self.owners.get(&var) {
                if other != &owner {
                    return Err(Error::Conflict(format!(
                        "${{{owner}}} and ${{{other}}} would both be exported as {var}: rename one of the sources"
                    )));
                }
            }
            self.owners.insert(var.clone(), owner);
            self.names.insert((source.to_string(), field), var.clone());
            self.env.insert(var, value);
        }
        Ok(())
    }

    /// Visit each `${...}` of `text`, replacing it with what `f` returns (`None`: keep).
    fn each_var(
        &self,
        text: &str,
        mut f: impl FnMut(&str) -> Result<Option<String>>,
    ) -> Result<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let inner = &after[..end];
            match f(inner)? {
                Some(rep) => out.push_str(&rep),
                None => out.push_str(&rest[start..start + 2 + end + 1]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Classify `${inner}`: Some(var name) to export, None to leave to the shell.
    ///
    /// dtk's are `${SOURCE:FIELD}` (a valid source name, a field name) and `${NAME}` for a
    /// private variable or a secret; everything else (`${f}`, `${1}`, `${X#*:}`,
    /// `${PATH//:/ }`, `${VAR:-default}`, ...) is the shell's, untouched.
    fn resolve(&self, inner: &str) -> Result<Option<(String, String)>> {
        let identifier = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if let Some((src, field)) = inner.split_once(':') {
            if let Some(var) = self.names.get(&(src.to_owned(), field.to_owned())) {
                return Ok(Some((var.clone(), self.env[var].clone())));
            }
            if !identifier(field) || Name::new(src).is_err() {
                return Ok(None);
            }
            if self.names.keys().any(|(s, _)| s == src) {
                let known: Vec<&str> = self
                    .names
                    .keys()
                    .filter(|(s, _)| s == src)
                    .map(|(_, f)| f.as_str())
                    .collect();
                return Err(Error::invalid(
                    "variable",
                    format!("${{{inner}}}"),
                    format!(
                        "source {src:?} has no field {field:?} (it has {})",
                        known.join(", ")
                    ),
                ));
            }
            return Err(Error::invalid(
                "variable",
                format!("${{{inner}}}"),
                format!("{src:?} is not an input or output of this node"),
            ));
        }
        if identifier(inner) {
            if crate::config::KIND_CREDENTIALS.contains(&inner) && self.credentials.contains(inner)
            {
                return Err(Error::invalid(
                    "variable",
                    format!("${{{inner}}}"),
                    "is a source kind's credential, which commands never receive; store a secret of the node's own with `dkt secret set NAME`",
                ));
            }
            if let Some(v) = self.private.get(inner) {
                if let Ok(mut used) = self.used.lock() {
                    used.insert(inner.to_owned());
                }
                return Ok(Some((inner.to_owned(), v.clone())));
            }
        }
        Ok(None)
    }

    /// The private variables and secrets the command named, with their values: the only
    /// ones exported to it.
    pub(crate) fn used_private(&self) -> Vec<(String, String)> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.private
            .iter()
            .filter(|(k, _)| used.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// For shell text: `${SRC:FIELD}` becomes `${DKT_SRC_FIELD}`, expanded by the shell.
    fn rewrite(&self, text: &str) -> Result<String> {
        self.each_var(text, |inner| {
            Ok(self.resolve(inner)?.map(|(var, _)| format!("${{{var}}}")))
        })
    }

    /// For an argument passed without a shell: the value itself.
    fn substitute(&self, text: &str) -> Result<String> {
        self.each_var(text, |inner| {
            Ok(self.resolve(inner)?.map(|(_, value)| value))
        })
    }
}
