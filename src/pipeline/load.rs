//! `load`: read → parse → `--set` → `[defaults.KIND]` → validate → expand, stopping after the
//! first phase that finds problems (later phases would only report consequences of them).

use std::path::Path;

use super::error::{Diagnostic, Problems, Sources};
use super::schema::{self, Context};
use super::{defaults, expand, overrides, spanned, KindLookup, PipelineError, Registry};
use crate::plan::Plan;

/// Load a pipeline file with the stage kinds compiled into `semiflow-stages`.
///
/// `overrides` are `--set PATH=VALUE` arguments (without `--set`), applied before validation.
/// Everything is checked here; nothing runs.
pub fn load(path: &Path, overrides: &[String]) -> Result<Plan, PipelineError> {
    load_with(path, overrides, &Registry)
}

/// [`load`] with the stage kinds given by `kinds`.
pub fn load_with(
    path: &Path,
    overrides: &[String],
    kinds: &dyn KindLookup,
) -> Result<Plan, PipelineError> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError {
        diagnostics: vec![Diagnostic {
            location: None,
            subject: file_name.clone(),
            key: String::new(),
            message: format!("cannot read the pipeline file: {e}"),
            help: Some("check the path (it is relative to the current directory)".to_string()),
        }],
    })?;
    let sources = Sources {
        file_name,
        file_text: text,
        sets: overrides.to_vec(),
    };
    let mut problems = Problems::default();
    let fail = |p, problems: &mut Problems| {
        problems.push(p);
        problems.take_error(&sources)
    };

    let mut root =
        spanned::parse_document(&sources.file_text).map_err(|p| fail(p, &mut problems))?;
    overrides::apply(&mut root, overrides).map_err(|p| fail(p, &mut problems))?;
    defaults::apply(&mut root, kinds, &mut problems);
    problems.check(&sources)?;

    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let env = |name: &str| std::env::var(name).ok();
    let cx = Context {
        kinds,
        base_dir,
        env: &env,
        file_len: sources.file_text.len(),
    };
    let doc = schema::read(&root, &cx, &mut problems);
    problems.check(&sources)?;

    let nodes = expand::expand(&doc, &mut problems);
    problems.check(&sources)?;

    Ok(Plan {
        name: doc.name,
        file: path.to_path_buf(),
        nodes,
        overrides: overrides.to_vec(),
        sweep: doc.sweep.into_iter().map(|v| (v.name, v.values)).collect(),
        executor: doc.executor,
        claims: doc.claims,
    })
}
