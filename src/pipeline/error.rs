//! Diagnostics in the style of a compiler: where (file:line:col), which key, what is wrong, and
//! what to write instead.

use std::fmt;
use std::ops::Range;

/// Where a piece of configuration text came from: the pipeline file or one `--set` argument.
/// Spans are byte ranges into that source's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    File,
    /// The `--set` argument with this index (0-based, in command-line order).
    Set(usize),
}

/// A span of source text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    pub origin: Origin,
    pub range: Range<usize>,
}

impl Span {
    pub fn file(range: Range<usize>) -> Self {
        Span {
            origin: Origin::File,
            range,
        }
    }
}

/// The texts spans point into, so a diagnostic can be rendered as `name:line:col` with a snippet.
#[derive(Debug, Clone)]
pub struct Sources {
    pub file_name: String,
    pub file_text: String,
    pub sets: Vec<String>,
}

impl Sources {
    fn name_and_text(&self, origin: Origin) -> (String, &str) {
        match origin {
            Origin::File => (self.file_name.clone(), &self.file_text),
            Origin::Set(i) => (format!("--set #{}", i + 1), &self.sets[i]),
        }
    }

    /// Resolve a span to a printable location (1-based line and column, columns in characters).
    pub fn locate(&self, span: &Span) -> Location {
        let (source, text) = self.name_and_text(span.origin);
        let start = span.range.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let source_line = text[line_start..line_end]
            .trim_end_matches('\r')
            .to_string();
        let end = span.range.end.clamp(start, line_end.max(start));
        let width = text[start..end].chars().count().max(1);
        Location {
            source,
            line,
            column,
            source_line,
            width,
        }
    }
}

/// A resolved position in a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The pipeline file path as given, or `--set #N`.
    pub source: String,
    pub line: usize,
    pub column: usize,
    /// The text of that line, for the snippet.
    pub source_line: String,
    /// How many characters of the line the span underlines.
    pub width: usize,
}

/// One problem found in a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// `None` only for problems that concern the file as a whole (e.g. it cannot be read).
    pub location: Option<Location>,
    /// When there is no location: the file or argument the problem concerns.
    pub subject: String,
    /// Dotted key path, e.g. `nodes.pretrain.epochs` (empty when the problem is not about a key).
    pub key: String,
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
}

impl Diagnostic {
    /// `line:col` of the problem, if it has a location.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        self.location.as_ref().map(|l| (l.line, l.column))
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: ")?;
        match &self.location {
            Some(loc) => write!(f, "{}:{}:{}: ", loc.source, loc.line, loc.column)?,
            None => write!(f, "{}: ", self.subject)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(loc) = &self.location {
            let gutter = loc.line.to_string().len();
            let indent: String = loc
                .source_line
                .chars()
                .take(loc.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n{:gutter$} |", "")?;
            write!(f, "\n{} | {}", loc.line, loc.source_line)?;
            write!(f, "\n{:gutter$} | {indent}{}", "", "^".repeat(loc.width))?;
        }
        if let Some(help) = &self.help {
            write!(f, "\nhelp: {help}")?;
        }
        Ok(())
    }
}

/// Everything wrong with a pipeline, earliest position first. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineError {
    pub diagnostics: Vec<Diagnostic>,
}

impl PipelineError {
    /// The first (earliest) problem.
    pub fn first(&self) -> &Diagnostic {
        &self.diagnostics[0]
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.diagnostics.len() > 1 {
            write!(f, "\n\n{} errors in pipeline", self.diagnostics.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for PipelineError {}

/// A problem before it is resolved against the sources.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub span: Option<Span>,
    pub key: String,
    pub message: String,
    pub help: Option<String>,
}

impl Problem {
    pub fn at(span: &Span, key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            span: Some(span.clone()),
            key: key.into(),
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Collects problems; one phase of validation reports all it finds before the load stops.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, p: Problem) {
        self.0.push(p);
    }

    /// `Err` with everything collected so far, if anything was.
    pub fn check(&mut self, sources: &Sources) -> Result<(), PipelineError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(self.take_error(sources))
    }

    pub fn take_error(&mut self, sources: &Sources) -> PipelineError {
        let mut problems = std::mem::take(&mut self.0);
        problems.sort_by(|a, b| {
            let key = |p: &Problem| p.span.as_ref().map(|s| (s.origin, s.range.start));
            key(a).cmp(&key(b))
        });
        let mut diagnostics: Vec<Diagnostic> = Vec::new();
        for p in problems {
            let d = Diagnostic {
                location: p.span.as_ref().map(|s| sources.locate(s)),
                subject: sources.file_name.clone(),
                key: p.key,
                message: p.message,
                help: p.help,
            };
            // The same mistake seen from several sweep points is one mistake.
            if !diagnostics.contains(&d) {
                diagnostics.push(d);
            }
        }
        PipelineError { diagnostics }
    }
}

/// Edit distance counting insertions, deletions, substitutions and adjacent transpositions
/// (optimal string alignment), for "did you mean" suggestions: `widht` is one edit from `width`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `a, b, c` with backticks, for "known: ..." lists.
pub(crate) fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "(none)".to_string();
    }
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "did you mean `x`?" if a candidate is close, else "known: ..." — the help line for unknown names.
pub(crate) fn suggest(word: &str, what: &str, candidates: &[&str]) -> String {
    match closest(word, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`? ({what}: {})", list(candidates)),
        None => format!("{what}: {}", list(candidates)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("epoch", "epochs"), 1);
        assert_eq!(edit_distance("pretrian", "pretrain"), 1);
        assert_eq!(edit_distance("widht", "width"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn closest_rejects_far_candidates() {
        assert_eq!(closest("epoch", ["epochs", "model"]), Some("epochs"));
        assert_eq!(closest("xyz", ["epochs", "model"]), None);
    }

    #[test]
    fn locate_counts_lines_and_chars() {
        let s = Sources {
            file_name: "p.toml".into(),
            file_text: "a = 1\nbé = 2\n".into(),
            sets: vec![],
        };
        let loc = s.locate(&Span::file(12..13));
        assert_eq!((loc.line, loc.column), (2, 6));
        assert_eq!(loc.source_line, "bé = 2");
    }
}
