//! The rules file: named selectors, groups of users, and grants of actions on
//! targets to subjects. Parsed and validated as a whole; the result is
//! immutable and indexed by subject so that a decision only looks at the
//! grants that concern the requesting user.

mod build;
mod lint;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use lint::{lint, LintOptions};

use crate::csel::{Expression, Facts};
use crate::diagnostic::Diagnostics;
use crate::files::{read_bounded, ReadError};

/// Largest rules file accepted; far above 100k grants.
pub(crate) const MAX_RULES_BYTES: u64 = 32 << 20;

/// The kinds of access: Nexus's four, and `overwrite`, a `PUT` of a manifest by a tag that
/// already exists (moving the tag). `edit` is every other `PUT`: one that creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    Add,
    Edit,
    Delete,
    Overwrite,
}

impl Action {
    pub(crate) const ALL: [Action; 5] = [
        Action::Read,
        Action::Add,
        Action::Edit,
        Action::Delete,
        Action::Overwrite,
    ];

    /// Nexus's mapping of HTTP methods; any other method has no action and
    /// is denied. A `PUT` is `edit` here; the decision tells a tag that already exists
    /// (`overwrite`) from one that does not.
    pub(crate) fn from_method(method: &str) -> Option<Action> {
        Some(match method {
            "GET" | "HEAD" | "OPTIONS" => Action::Read,
            "POST" | "PATCH" => Action::Add,
            "PUT" => Action::Edit,
            "DELETE" => Action::Delete,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Add => "add",
            Action::Edit => "edit",
            Action::Delete => "delete",
            Action::Overwrite => "overwrite",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of actions, as a grant lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActionSet(u8);

impl ActionSet {
    pub(crate) const ACTION_WORDS: &'static str =
        "read, add, edit, delete, overwrite, pull (= read), push (= read, add, edit, overwrite) or *";

    /// Every action word, for "did you mean".
    pub(crate) const WORDS: [&'static str; 7] = ["read", "add", "edit", "delete", "overwrite", "pull", "push"];

    /// `read`, `add`, `edit`, `delete`, `overwrite`, `*`, and Docker's `pull` and `push`.
    pub(crate) fn from_word(word: &str) -> Option<ActionSet> {
        let actions: &[Action] = match word {
            "read" | "pull" => &[Action::Read],
            "add" => &[Action::Add],
            "edit" => &[Action::Edit],
            "delete" => &[Action::Delete],
            "overwrite" => &[Action::Overwrite],
            "push" => &[Action::Read, Action::Add, Action::Edit, Action::Overwrite],
            "*" => &Action::ALL,
            _ => return None,
        };
        Some(actions.iter().fold(ActionSet::default(), |set, a| set.with(*a)))
    }

    pub(crate) fn with(self, action: Action) -> ActionSet {
        ActionSet(self.0 | action.bit())
    }

    pub(crate) fn union(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 | other.0)
    }

    pub(crate) fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }
}

impl fmt::Display for ActionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Action::ALL
            .iter()
            .filter(|a| self.contains(**a))
            .map(|a| a.name())
            .collect();
        f.write_str(&names.join(", "))
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Everyone, logged in or not.
    Anonymous,
    /// Every valid user.
    Authenticated,
    User(String),
    Group(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Anonymous => f.write_str("anonymous"),
            Subject::Authenticated => f.write_str("authenticated"),
            Subject::User(u) => f.write_str(u),
            Subject::Group(g) => write!(f, "@{g}"),
        }
    }
}

/// What a grant applies to.
#[derive(Debug, Clone)]
pub enum Target {
    /// `*`: every path (except `/v2/_catalog`, which only a target whose
    /// expression names it reaches).
    Everything,
    /// A named selector (index into [`Rules::selectors`]).
    Selector(usize),
    /// A parenthesised expression written in the grant.
    Inline(Arc<Expression>),
}

#[derive(Debug, Clone)]
pub(crate) struct SelectorDef {
    pub name: String,
    pub line: usize,
    pub column: usize,
    pub expression: Arc<Expression>,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupDef {
    pub name: String,
    pub line: usize,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone)]
pub struct Grant {
    /// Source position, for logs and `explain`.
    pub line: usize,
    pub column: usize,
    /// The statement as written, whitespace folded.
    pub text: String,
    pub actions: ActionSet,
    pub targets: Vec<Target>,
    pub subjects: Vec<Subject>,
}

/// Validated, immutable rules.
#[derive(Debug, Clone)]
pub struct Rules {
    source_name: String,
    /// The text the rules were parsed from, for the carets of [`lint`]'s warnings.
    source: Arc<str>,
    selectors: Vec<SelectorDef>,
    groups: Vec<GroupDef>,
    groups_of_user: HashMap<String, Vec<usize>>,
    grants: Vec<Grant>,
    index: GrantIndex,
    options: RulesOptions,
}

/// Grant numbers by subject, so a decision's cost depends on the grants that
/// concern the requesting user, not on the size of the file.
#[derive(Debug, Clone, Default)]
struct GrantIndex {
    anonymous: Vec<u32>,
    authenticated: Vec<u32>,
    by_user: HashMap<String, Vec<u32>>,
    by_group: Vec<Vec<u32>>,
    /// Grants to groups by name, for groups an identity source (LDAP, OIDC) says a user is
    /// in; a local group of the same name has its grants here too (members are the union).
    by_group_name: HashMap<String, Vec<u32>>,
}

/// How a rules file is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RulesOptions {
    /// An identity source (LDAP, OIDC) supplies groups: `@name` with no `group name = …` in
    /// the file names one of its groups. Without a source, such a name is an error (a typo).
    pub external_groups: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read rules file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("rules file {path} is {size} bytes; the limit is {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl Rules {
    /// Parses and validates a rules file's text. `file_name` is used in
    /// error messages.
    pub fn parse(file_name: &str, text: &str) -> Result<Rules, Diagnostics> {
        build::build(file_name, text, RulesOptions::default())
    }

    /// [`Rules::parse`] with options.
    pub fn parse_with(file_name: &str, text: &str, options: RulesOptions) -> Result<Rules, Diagnostics> {
        build::build(file_name, text, options)
    }

    /// Reads, parses and validates a rules file.
    pub fn load(path: &Path) -> Result<Rules, LoadError> {
        Rules::load_with(path, RulesOptions::default())
    }

    /// [`Rules::load`] with options.
    pub fn load_with(path: &Path, options: RulesOptions) -> Result<Rules, LoadError> {
        let shown = path.display().to_string();
        let bytes = read_bounded(path, MAX_RULES_BYTES).map_err(|e| match e {
            ReadError::Io(source) => LoadError::Io {
                path: shown.clone(),
                source,
            },
            ReadError::TooLarge(size) => LoadError::TooLarge {
                path: shown.clone(),
                size,
                limit: MAX_RULES_BYTES,
            },
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let valid = String::from_utf8_lossy(&e.as_bytes()[..offset]).into_owned();
            LoadError::Invalid(
                crate::diagnostic::Diagnostic::at(
                    &shown,
                    &valid,
                    offset,
                    offset,
                    "the rules file is not valid UTF-8 here",
                )
                .into(),
            )
        })?;
        Rules::parse_with(&shown, &text, options).map_err(LoadError::Invalid)
    }

    /// Rules with no statement: everything is denied.
    pub(crate) fn empty() -> Rules {
        Rules {
            source_name: "<empty>".into(),
            source: Arc::from(""),
            selectors: Vec::new(),
            groups: Vec::new(),
            groups_of_user: HashMap::new(),
            grants: Vec::new(),
            index: GrantIndex::default(),
            options: RulesOptions::default(),
        }
    }

    /// The options the rules were loaded with (a reload uses them again).
    pub fn options(&self) -> RulesOptions {
        self.options
    }

    pub(crate) fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The text the rules were parsed from.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn selectors(&self) -> &[SelectorDef] {
        &self.selectors
    }

    pub(crate) fn groups(&self) -> &[GroupDef] {
        &self.groups
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The names of the groups `user` belongs to.
    pub fn groups_of(&self, user: &str) -> impl Iterator<Item = &str> {
        self.groups_of_user
            .get(user)
            .into_iter()
            .flatten()
            .map(|g| self.groups[*g].name.as_str())
    }

    /// The grants that apply to `user` (`None`: anonymous), each once.
    pub fn grants_for(&self, user: Option<&str>) -> Vec<&Grant> {
        self.grants_for_groups(user, &[])
    }

    /// The grants that apply to `user` in the identity source's `groups` too, each once.
    pub fn grants_for_groups(&self, user: Option<&str>, groups: &[String]) -> Vec<&Grant> {
        let mut numbers: Vec<u32> = self.index.anonymous.clone();
        if let Some(user) = user {
            for group in groups {
                if let Some(list) = self.index.by_group_name.get(group) {
                    numbers.extend(list);
                }
            }
            numbers.extend(&self.index.authenticated);
            if let Some(own) = self.index.by_user.get(user) {
                numbers.extend(own);
            }
            for group in self.groups_of_user.get(user).into_iter().flatten() {
                numbers.extend(&self.index.by_group[*group]);
            }
            numbers.sort_unstable();
            numbers.dedup();
        }
        numbers.into_iter().map(|n| &self.grants[n as usize]).collect()
    }

    /// A grant that allows `action` on the request described by `facts`:
    /// the first that does among the grants to everyone, then to every user,
    /// to the user by name, and to each of the user's groups. Only these
    /// lists are looked at, so the cost does not grow with the grants that
    /// concern other users; nothing is allocated.
    pub(crate) fn find_grant(&self, user: Option<&str>, action: Action, facts: &Facts) -> Option<&Grant> {
        self.find_grant_for(user, &[], action, facts)
    }

    /// [`Rules::find_grant`] for a user an identity source says is in `groups` as well.
    pub(crate) fn find_grant_for(
        &self,
        user: Option<&str>,
        external_groups: &[String],
        action: Action,
        facts: &Facts,
    ) -> Option<&Grant> {
        let first_in = |numbers: &[u32]| {
            numbers
                .iter()
                .map(|n| &self.grants[*n as usize])
                .find(|grant| grant.actions.contains(action) && self.target_matches_any(grant, facts))
        };
        if let Some(grant) = first_in(&self.index.anonymous) {
            return Some(grant);
        }
        let user = user?;
        let own = self.index.by_user.get(user).map_or(&[][..], Vec::as_slice);
        let groups = self.groups_of_user.get(user).map_or(&[][..], Vec::as_slice);
        [&self.index.authenticated[..], own]
            .into_iter()
            .chain(groups.iter().map(|group| &self.index.by_group[*group][..]))
            .chain(
                external_groups
                    .iter()
                    .filter_map(|name| self.index.by_group_name.get(name).map(Vec::as_slice)),
            )
            .find_map(first_in)
    }

    /// Whether one of the grant's targets matches.
    pub(crate) fn target_matches_any(&self, grant: &Grant, facts: &Facts) -> bool {
        grant.targets.iter().any(|t| self.target_matches(t, facts))
    }

    pub(crate) fn target_matches(&self, target: &Target, facts: &Facts) -> bool {
        let expression = match target {
            Target::Everything => return facts.path != crate::CATALOG_PATH,
            Target::Selector(i) => &self.selectors[*i].expression,
            Target::Inline(expression) => expression,
        };
        // The catalog lists every repository: a target reaches it only when
        // a positive comparison of its expression names it, never through a
        // broad match (`path != "/v2/_catalogue"` names nothing).
        if facts.path == crate::CATALOG_PATH && !expression.names_path(crate::CATALOG_PATH) {
            return false;
        }
        expression.matches(facts)
    }

    /// How a target is written in the file.
    pub(crate) fn target_text(&self, target: &Target) -> String {
        match target {
            Target::Everything => "*".into(),
            Target::Selector(i) => self.selectors[*i].name.clone(),
            Target::Inline(expression) => format!("({expression})"),
        }
    }

    /// Whether `subject` names `user` (`None`: anonymous), in the identity source's `groups`.
    pub(crate) fn subject_includes(&self, subject: &Subject, user: Option<&str>, groups: &[String]) -> bool {
        match (subject, user) {
            (Subject::Anonymous, _) => true,
            (_, None) => false,
            (Subject::Authenticated, Some(_)) => true,
            (Subject::User(name), Some(user)) => name == user,
            (Subject::Group(group), Some(user)) => {
                self.groups_of(user).any(|g| g == group) || groups.iter().any(|g| g == group)
            }
        }
    }
}
