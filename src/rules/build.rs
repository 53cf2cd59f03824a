//! Rules text → [`Rules`]: parse with the pest grammar, then resolve names
//! (selectors and groups may be used before they are defined) and index.
//!
//! A large file is parsed a batch of statements at a time: pest's parse tree
//! takes some fifty bytes per byte of input, so parsing a 5 MB file whole
//! would cost a quarter of a gigabyte at every reload. Statement boundaries
//! come from a quick scan that knows only comments, strings and the three
//! statement keywords; when a batch does not parse on its own (a syntax
//! error, or a name such as `group` that the scan took for a keyword), the
//! file is parsed whole once, for the exact error or for the boundaries.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use pest::iterators::Pair;
use pest::Parser;

use super::{ActionSet, Grant, GrantIndex, GroupDef, Member, Rules, RulesOptions, SelectorDef, Subject, Target};
use crate::csel::{build_expression, check_nesting, BuildContext, Expression};
use crate::diagnostic::{did_you_mean, Diagnostic, Diagnostics};
use crate::grammar::{Grammar, Rule};

/// Statements are parsed in batches of about this many bytes of text.
const BATCH_BYTES: usize = 64 * 1024;

pub(super) fn build(file: &str, text: &str, options: RulesOptions) -> Result<Rules, Diagnostics> {
    build_in_batches(file, text, BATCH_BYTES, options)
}

fn build_in_batches(file: &str, text: &str, batch_bytes: usize, options: RulesOptions) -> Result<Rules, Diagnostics> {
    check_nesting(file, text, true)?;
    let scanned = batches(text, &scan_statements(text), batch_bytes);
    if let Ok(result) = Builder::run(file, text, &scanned, options) {
        return result;
    }
    // The exact syntax error, or the statement boundaries the scan got wrong.
    let whole = BuildContext::whole(file, text);
    let starts = {
        let mut parsed =
            Grammar::parse(Rule::rules_file, text).map_err(|e| Diagnostics::from(whole.syntax_error(e)))?;
        let statements = parsed.next().map(Pair::into_inner).into_iter().flatten();
        statements
            .filter_map(|statement| {
                let kind = match statement.as_rule() {
                    Rule::grant => Kind::Grant,
                    Rule::selector_def | Rule::group_def => Kind::Definition,
                    _ => return None,
                };
                Some((statement.as_span().start(), kind))
            })
            .collect::<Vec<_>>()
    };
    match Builder::run(file, text, &batches(text, &starts, batch_bytes), options) {
        Ok(result) => result,
        // Each statement parsed whole also parses alone; should that ever fail, report it.
        Err(unparsable) => {
            let Unparsable { error, batch } = *unparsable;
            Err(Diagnostics::from(batch.context(file, text).syntax_error(error)))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `selector` or `group`: read in the first pass, so grants can use names defined later.
    Definition,
    Grant,
}

/// Where statements seem to start: the words `selector`, `group` and `grant` outside comments
/// and strings. A name spelled like a keyword is taken for one; the batch it splits then does
/// not parse, and the file is parsed whole instead.
fn scan_statements(text: &str) -> Vec<(usize, Kind)> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'$');
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                i = bytes[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |n| i + n);
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b if is_word(b) => {
                let start = i;
                while i < bytes.len() && is_word(bytes[i]) {
                    i += 1;
                }
                match &bytes[start..i] {
                    b"selector" | b"group" => starts.push((start, Kind::Definition)),
                    b"grant" => starts.push((start, Kind::Grant)),
                    _ => {}
                }
            }
            _ => i += 1,
        }
    }
    starts
}

/// A run of statements of one kind, parsed together.
#[derive(Debug, Clone)]
struct Batch {
    range: Range<usize>,
    kind: Kind,
    /// Line and column of `range.start`.
    origin: (usize, usize),
}

impl Batch {
    fn context<'s>(&self, file: &'s str, text: &'s str) -> BuildContext<'s> {
        BuildContext {
            file,
            source: text,
            offset: self.range.start,
            origin: self.origin,
        }
    }
}

/// Groups consecutive statements of one kind into batches of about `batch_bytes`. Text before
/// the first statement (comments) goes with it; text after a statement goes with that statement.
fn batches(text: &str, starts: &[(usize, Kind)], batch_bytes: usize) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    for (i, (start, kind)) in starts.iter().enumerate() {
        let start = if i == 0 { 0 } else { *start };
        let end = starts.get(i + 1).map_or(text.len(), |(next, _)| *next);
        match batches.last_mut() {
            Some(last) if last.kind == *kind && last.range.len() < batch_bytes => last.range.end = end,
            _ => batches.push(Batch {
                range: start..end,
                kind: *kind,
                origin: (0, 0),
            }),
        }
    }
    if batches.is_empty() {
        // No statement: the text must still parse (comments only) or be reported.
        batches.push(Batch {
            range: 0..text.len(),
            kind: Kind::Definition,
            origin: (1, 1),
        });
    }
    // Line and column of every batch start, in one pass over the text.
    let (mut line, mut line_start, mut counted) = (1, 0, 0);
    for batch in &mut batches {
        let start = batch.range.start;
        for (offset, byte) in text.as_bytes()[counted..start].iter().enumerate() {
            if *byte == b'\n' {
                line += 1;
                line_start = counted + offset + 1;
            }
        }
        counted = start;
        batch.origin = (line, text[line_start..start].chars().count() + 1);
    }
    batches
}

/// A batch that does not parse on its own.
struct Unparsable {
    error: pest::error::Error<Rule>,
    batch: Batch,
}

#[derive(Default)]
struct Builder {
    errors: Vec<Diagnostic>,
    selectors: Vec<SelectorDef>,
    selector_by_name: HashMap<String, usize>,
    groups: Vec<GroupDef>,
    group_by_name: HashMap<String, usize>,
    grants: Vec<Grant>,
    index: GrantIndex,
    options: RulesOptions,
}

impl Builder {
    /// Definitions first, then grants; each batch is parsed once and dropped before the next.
    fn run(
        file: &str,
        text: &str,
        batches: &[Batch],
        options: RulesOptions,
    ) -> Result<Result<Rules, Diagnostics>, Box<Unparsable>> {
        let mut builder = Builder {
            options,
            ..Builder::default()
        };
        for pass in [Kind::Definition, Kind::Grant] {
            if pass == Kind::Grant {
                builder.index.by_group = vec![Vec::new(); builder.groups.len()];
            }
            for batch in batches.iter().filter(|b| b.kind == pass) {
                let ctx = batch.context(file, text);
                let mut parsed =
                    Grammar::parse(Rule::rules_file, &text[batch.range.clone()]).map_err(|error| Unparsable {
                        error,
                        batch: batch.clone(),
                    })?;
                for statement in parsed.next().map(Pair::into_inner).into_iter().flatten() {
                    match (statement.as_rule(), pass) {
                        (Rule::selector_def, Kind::Definition) => builder.selector_def(&ctx, statement),
                        (Rule::group_def, Kind::Definition) => builder.group_def(&ctx, statement),
                        (Rule::grant, Kind::Grant) => builder.grant(&ctx, statement),
                        (Rule::EOI, _) => {}
                        // A statement of the other kind in this batch: the scan went wrong.
                        _ => {
                            return Err(Box::new(Unparsable {
                                error: pest::error::Error::new_from_pos(
                                    pest::error::ErrorVariant::CustomError {
                                        message: "unexpected statement".into(),
                                    },
                                    statement.as_span().start_pos(),
                                ),
                                batch: batch.clone(),
                            }))
                        }
                    }
                }
            }
        }
        Ok(builder.finish(file, text))
    }

    fn selector_def(&mut self, ctx: &BuildContext, statement: Pair<Rule>) {
        let mut parts = statement.into_inner().skip(1);
        let (Some(name_pair), Some(expr_pair)) = (parts.next(), parts.next()) else {
            return;
        };
        let name = name_text(&name_pair);
        let (line, column) = ctx.line_col(&name_pair);
        if let Some(previous) = self.selector_by_name.get(&name) {
            self.errors.push(ctx.error_at(
                &name_pair,
                format!(
                    "selector `{name}` is already defined at line {}",
                    self.selectors[*previous].line
                ),
            ));
            return;
        }
        match build_expression(ctx, expr_pair) {
            Ok(expr) => {
                self.selector_by_name.insert(name.clone(), self.selectors.len());
                self.selectors.push(SelectorDef {
                    name,
                    line,
                    column,
                    expression: Arc::new(Expression::new(expr)),
                });
            }
            Err(e) => self.errors.push(e),
        }
    }

    fn group_def(&mut self, ctx: &BuildContext, statement: Pair<Rule>) {
        let mut parts = statement.into_inner().skip(1);
        let Some(name_pair) = parts.next() else { return };
        let name = name_text(&name_pair);
        if let Some(previous) = self.group_by_name.get(&name) {
            self.errors.push(ctx.error_at(
                &name_pair,
                format!(
                    "group `{name}` is already defined at line {}",
                    self.groups[*previous].line
                ),
            ));
            return;
        }
        let mut members = Vec::new();
        for member_pair in parts {
            let Some(inner) = member_pair.into_inner().next() else {
                continue;
            };
            let member = name_text(&inner);
            let (line, column) = ctx.line_col(&inner);
            if inner.as_rule() == Rule::bare_name && member.starts_with('@') {
                self.errors
                    .push(ctx.error_at(&inner, "groups cannot contain groups: list the users"));
            } else if matches!(member.as_str(), "anonymous" | "authenticated") {
                self.errors.push(ctx.error_at(
                    &inner,
                    format!("`{member}` is a subject of its own, not a user: grant to it directly"),
                ));
            } else if members.iter().any(|m: &Member| m.name == member) {
                self.errors
                    .push(ctx.error_at(&inner, format!("`{member}` is listed twice in group `{name}`")));
            } else {
                members.push(Member {
                    name: member,
                    line,
                    column,
                });
            }
        }
        self.group_by_name.insert(name.clone(), self.groups.len());
        self.groups.push(GroupDef {
            name,
            line: ctx.line_col(&name_pair).0,
            members,
        });
    }

    fn grant(&mut self, ctx: &BuildContext, pair: Pair<Rule>) {
        let (line, column) = ctx.line_col(&pair);
        let text = pair.as_str().split_whitespace().collect::<Vec<_>>().join(" ");
        let mut actions = ActionSet::default();
        let mut targets = Vec::new();
        let mut subjects = Vec::new();
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::actions => {
                    for action in part.into_inner() {
                        match ActionSet::from_word(action.as_str()) {
                            Some(set) => actions = actions.union(set),
                            None => {
                                let word = action.as_str();
                                let mut d = ctx.error_at(
                                    &action,
                                    format!("unknown action `{word}`: the actions are {}", ActionSet::ACTION_WORDS),
                                );
                                if let Some(near) = did_you_mean(word, ActionSet::WORDS) {
                                    d = d.with_help(format!("did you mean `{near}`?"));
                                }
                                self.errors.push(d);
                            }
                        }
                    }
                }
                Rule::targets => {
                    for target in part.into_inner() {
                        match target.as_rule() {
                            Rule::everything => targets.push(Target::Everything),
                            Rule::inline_selector => {
                                let Some(expr_pair) = target.into_inner().next() else {
                                    continue;
                                };
                                match build_expression(ctx, expr_pair) {
                                    Ok(expr) => targets.push(Target::Inline(Arc::new(Expression::new(expr)))),
                                    Err(e) => self.errors.push(e),
                                }
                            }
                            _ => {
                                let name = name_text(&target);
                                match self.selector_by_name.get(&name) {
                                    Some(i) => targets.push(Target::Selector(*i)),
                                    None => {
                                        let mut d = ctx.error_at(&target, format!("unknown selector `{name}`"));
                                        match did_you_mean(&name, self.selectors.iter().map(|s| s.name.as_str())) {
                                            Some(near) => d = d.with_help(format!("did you mean `{near}`?")),
                                            None => {
                                                d = d.with_help(
                                                    "define it with `selector NAME = EXPRESSION`, or write the expression in parentheses",
                                                )
                                            }
                                        }
                                        self.errors.push(d);
                                    }
                                }
                            }
                        }
                    }
                }
                Rule::subjects => {
                    for subject in part.into_inner() {
                        if subject.as_rule() == Rule::group_ref {
                            let Some(name_pair) = subject.clone().into_inner().next() else {
                                continue;
                            };
                            let name = name_text(&name_pair);
                            // With an identity source, a name the file does not define is one of
                            // the source's groups.
                            if self.group_by_name.contains_key(&name) || self.options.external_groups {
                                subjects.push(Subject::Group(name));
                            } else {
                                let mut d = ctx.error_at(&subject, format!("unknown group `@{name}`"));
                                match did_you_mean(&name, self.groups.iter().map(|g| g.name.as_str())) {
                                    Some(near) => d = d.with_help(format!("did you mean `@{near}`?")),
                                    None => d = d.with_help("define it with `group NAME = user, user`"),
                                }
                                self.errors.push(d);
                            }
                            continue;
                        }
                        let name = name_text(&subject);
                        subjects.push(match name.as_str() {
                            "anonymous" => Subject::Anonymous,
                            "authenticated" => Subject::Authenticated,
                            _ => Subject::User(name),
                        });
                    }
                }
                _ => {}
            }
        }
        let number = self.grants.len() as u32;
        for subject in &subjects {
            match subject {
                Subject::Anonymous => self.index.anonymous.push(number),
                Subject::Authenticated => self.index.authenticated.push(number),
                Subject::User(u) => self.index.by_user.entry(u.clone()).or_default().push(number),
                Subject::Group(g) => {
                    if let Some(i) = self.group_by_name.get(g) {
                        self.index.by_group[*i].push(number);
                    }
                    if self.options.external_groups {
                        self.index.by_group_name.entry(g.clone()).or_default().push(number);
                    }
                }
            }
        }
        self.grants.push(Grant {
            line,
            column,
            text,
            actions,
            targets,
            subjects,
        });
    }

    fn finish(mut self, file: &str, text: &str) -> Result<Rules, Diagnostics> {
        for list in self
            .index
            .by_user
            .values_mut()
            .chain(self.index.by_group.iter_mut())
            .chain(self.index.by_group_name.values_mut())
        {
            list.dedup();
        }
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| (d.line, d.column));
            return Err(Diagnostics(self.errors));
        }
        let mut groups_of_user: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, group) in self.groups.iter().enumerate() {
            for member in &group.members {
                groups_of_user.entry(member.name.clone()).or_default().push(i);
            }
        }
        Ok(Rules {
            source_name: file.to_string(),
            source: Arc::from(text),
            selectors: self.selectors,
            groups: self.groups,
            groups_of_user,
            grants: self.grants,
            index: self.index,
            options: self.options,
        })
    }
}

/// A name as written: bare, or a quoted string with escapes applied.
fn name_text(pair: &Pair<Rule>) -> String {
    match pair.as_rule() {
        Rule::string => crate::csel::unescape_literal(pair.clone().into_inner().next().map_or("", |p| p.as_str())),
        _ => pair.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statements of every kind, several per line, over several lines, with keywords inside
    /// comments and strings, names spelled like keywords, CRLF and non-ASCII text.
    const TRICKY: &str = "# grant selector group: words in a comment\r\n\
        selector library = format == \"docker\" and path =^ \"/v2/library/\" selector \"grant\" = path == \"/v2/ grant # selector\"\r\n\
        group   team = alice, \"bob grant\" group admins = 'ädmin'   # ünïcode group\n\
        \tgrant pull on library to anonymous grant push on (path =^ '/v2/team/' or\n\
            path =~ \"/v2/x/.*\") to @team, carol\n\
        grant * on *, grant to @admins group grant = dave\n\
        grant read on library to @grant\n";

    fn debug(result: Result<Rules, Diagnostics>) -> String {
        match result {
            Ok(rules) => format!(
                "{:?}",
                (rules.selectors, rules.groups, rules.grants, rules.index.by_group)
            ),
            Err(diagnostics) => diagnostics.to_string(),
        }
    }

    #[test]
    fn batching_does_not_change_the_rules() {
        let texts = [
            TRICKY,
            "",
            "# only a comment",
            include_str!("../../examples/registry.rules"),
            include_str!("../../examples/readonly-admins.rules"),
            include_str!("../../examples/personal.rules"),
        ];
        for text in texts {
            let whole = debug(build_in_batches("t.rules", text, usize::MAX, RulesOptions::default()));
            for batch_bytes in [1, 40, 200] {
                assert_eq!(
                    debug(build_in_batches("t.rules", text, batch_bytes, RulesOptions::default())),
                    whole,
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn positions_are_those_of_the_file() {
        let rules = match build_in_batches("t.rules", TRICKY, 1, RulesOptions::default()) {
            Ok(rules) => rules,
            Err(e) => panic!("{e}"),
        };
        let selectors: Vec<_> = rules
            .selectors
            .iter()
            .map(|s| (s.name.as_str(), s.line, s.column))
            .collect();
        assert_eq!(selectors, [("library", 2, 10), ("grant", 2, 75)]);
        let members: Vec<_> = rules.groups[0].members.iter().map(|m| (m.line, m.column)).collect();
        assert_eq!(members, [(3, 16), (3, 23)]);
        let groups: Vec<_> = rules.groups.iter().map(|g| (g.name.as_str(), g.line)).collect();
        assert_eq!(groups, [("team", 3), ("admins", 3), ("grant", 6)]);
        let grants: Vec<_> = rules.grants.iter().map(|g| (g.line, g.column)).collect();
        assert_eq!(grants, [(4, 2), (4, 37), (6, 1), (7, 1)]);
    }

    #[test]
    fn errors_are_those_of_the_whole_file() {
        let broken = [
            // syntax errors: reported as the whole file's parse reports them
            "selector a = path =^ \"/v2/\"\ngrant pull on a to\ngrant push on a to anonymous",
            "group g = alice,\ngrant pull on * to @g",
            "selector a = path =^\n",
            "grant pull on (path ==) to anonymous",
            // errors found while building
            "grant pull on libary to anonymous\nselector library = path =^ \"/v2/library/\"",
            "selector a = path == \"x\"\nselector a = path == \"y\"\ngrant frobnicate on a to @nobody",
            "group g = anonymous\ngrant pull on (path =~ \"(?=x)\") to g",
        ];
        for text in broken {
            let whole = debug(build_in_batches("t.rules", text, usize::MAX, RulesOptions::default()));
            assert!(whole.starts_with("error"), "{text}: {whole}");
            assert_eq!(
                debug(build_in_batches("t.rules", text, 1, RulesOptions::default())),
                whole,
                "{text}"
            );
        }
        let syntax = "selector a = path =^ \"/v2/\"\ngrant pull on a to\ngrant push on a to anonymous";
        let expected = match Grammar::parse(Rule::rules_file, syntax) {
            Ok(_) => panic!("must not parse"),
            Err(e) => BuildContext::whole("t.rules", syntax).syntax_error(e).to_string(),
        };
        assert_eq!(
            debug(build_in_batches("t.rules", syntax, 1, RulesOptions::default())),
            expected
        );
    }
}
