//! Allow or deny one request: canonical path, action from the method, the
//! docker extras, then the grants that concern the subject.
//!
//! [`decide`] is the hot path and keeps only the reason; [`explain`] redoes
//! the work for a person and says why each grant did or did not match.

use std::fmt;

use crate::access_keys::KeyScope;
use crate::csel::{Expr, Facts};
use crate::request::{canonicalize, DockerRoute, Rejection};
use crate::rules::{Action, Grant, Rules, Target};

/// The original request, as nginx describes it.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// `X-Original-Method`.
    pub method: &'a str,
    /// `X-Original-URI`: path and query exactly as the client sent them.
    pub uri: &'a str,
    /// `X-Repository-Format`, or the configured default.
    pub format: &'a str,
    /// `X-Original-Content-Type`: a blob upload may only start with none or
    /// `application/octet-stream`.
    pub content_type: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// The canonical path, when the request got that far.
    pub path: Option<String>,
    pub action: Option<Action>,
    pub docker: Option<DockerRoute>,
    /// Set when the answer depends on whether a tag exists: the subject may create tags here
    /// (`edit`) or move existing ones (`overwrite`), not both. `allowed` is false until
    /// [`Decision::settle`] is given the registry's answer, so a caller that does not ask denies.
    pub tag_check: Option<TagCheck>,
}

/// A manifest `PUT` by tag whose outcome depends on whether the registry already holds the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagCheck {
    pub name: String,
    pub tag: String,
    /// The outcome when the tag exists (moving it needs `overwrite`): the grant, or the refusal.
    pub if_exists: Result<Reason, Reason>,
    /// The outcome when it does not (creating it needs `edit`).
    pub if_new: Result<Reason, Reason>,
}

impl Decision {
    /// The decision once the registry said whether the tag exists; a decision without a tag
    /// check is returned as it is.
    pub fn settle(mut self, tag_exists: bool) -> Decision {
        let Some(check) = self.tag_check.take() else {
            return self;
        };
        let (outcome, action) = if tag_exists {
            (check.if_exists, Action::Overwrite)
        } else {
            (check.if_new, Action::Edit)
        };
        self.action = Some(action);
        (self.allowed, self.reason) = match outcome {
            Ok(granted) => (true, granted),
            Err(refused) => (false, refused),
        };
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Allowed by this grant.
    Granted { line: usize, grant: String },
    /// `/v2/` is open to every authenticated user: it is how `docker login`
    /// checks credentials, and it reveals nothing.
    PingForUsers,
    /// No grant for this subject allows this action on this path.
    NoGrant,
    /// The path failed canonicalization.
    BadPath(Rejection),
    /// A method that maps to no action.
    UnknownMethod(String),
    /// A blob-upload POST with a Content-Type other than none or
    /// `application/octet-stream`: the registry would read `from` from a form
    /// body csel-auth never sees.
    FormBodyUpload,
    /// Duplicate or malformed mount parameters.
    BadMount(Rejection),
    /// A cross-repository mount from a repository the subject cannot read.
    MountSourceDenied { from: String },
    /// The rules allow the owner, but the access key used is scoped narrower.
    OutsideKeyScope { key: String },
    /// A manifest `PUT` by a tag that exists, from a subject allowed to create tags here but
    /// not to move them (`edit` without `overwrite`).
    TagExists { name: String, tag: String },
    /// A manifest `PUT` by a new tag, from a subject allowed only to move existing tags.
    TagIsNew { name: String, tag: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Granted { line, grant } => write!(f, "line {line}: {grant}"),
            Reason::PingForUsers => f.write_str("the /v2/ ping is open to every authenticated user"),
            Reason::NoGrant => f.write_str("no grant allows it"),
            Reason::BadPath(why) => write!(f, "refused path: {why}"),
            Reason::UnknownMethod(m) => write!(f, "method {m} maps to no action"),
            Reason::FormBodyUpload => f.write_str(
                "blob upload with a Content-Type other than application/octet-stream (the registry would read \
                 `from` from a form body)",
            ),
            Reason::BadMount(why) => write!(f, "refused mount: {why}"),
            Reason::MountSourceDenied { from } => write!(f, "mount source {from} is not readable"),
            Reason::OutsideKeyScope { key } => write!(f, "outside the scope of access key {key}"),
            Reason::TagExists { name, tag } => write!(
                f,
                "tag {tag} of {name} exists and may not be overwritten (moving a tag needs `overwrite`)"
            ),
            Reason::TagIsNew { name, tag } => {
                write!(
                    f,
                    "tag {tag} of {name} is new (creating a tag needs `edit`; only `overwrite` is granted)"
                )
            }
        }
    }
}

impl Reason {
    /// A request that no login makes right (a refused path, method, mount or
    /// upload body): 403 for everyone, anonymous included.
    pub(crate) fn is_malformed(&self) -> bool {
        matches!(
            self,
            Reason::BadPath(_) | Reason::UnknownMethod(_) | Reason::BadMount(_) | Reason::FormBodyUpload
        )
    }
}

/// The credentials a request carried, as the service verified them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// None at all: anonymous.
    None,
    /// Basic credentials of a known user.
    Basic,
    /// A valid token from the realm; its subject is a user or anonymous.
    Token,
}

/// How the service answers a decided request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200: the request goes through.
    Allow,
    /// 401 with a challenge (Basic, or Bearer in token mode): logging in, or
    /// fetching a token, may help.
    Challenge,
    /// 401 with a Bearer challenge saying `insufficient_scope`: a valid token
    /// that does not cover the request. Docker reports it as "denied" and
    /// stops at once (a 403 makes it retry a push for a minute).
    InsufficientScope,
    /// 403.
    Forbidden,
}

impl Answer {
    pub fn status(self) -> u16 {
        match self {
            Answer::Allow => 200,
            Answer::Challenge | Answer::InsufficientScope => 401,
            Answer::Forbidden => 403,
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Answer::Allow => "ALLOW (200)",
            Answer::Challenge => "DENY (401: the client is asked to log in, or to fetch a token)",
            Answer::InsufficientScope => "DENY (401 insufficient_scope: the token does not cover it)",
            Answer::Forbidden => "DENY (403)",
        })
    }
}

/// The one mapping from a decision to 200 / 401 / 403, for the service, `explain`, `test` and
/// the tests. `token_mode`: the service runs with `--token-realm`.
pub(crate) fn answer(decision: &Decision, credential: Credential, token_mode: bool) -> Answer {
    // Docker sends credentials only after a challenge: in token mode every
    // request without them gets one, whatever the rules say.
    if token_mode && credential == Credential::None {
        return Answer::Challenge;
    }
    if decision.allowed {
        return Answer::Allow;
    }
    if decision.reason.is_malformed() {
        return Answer::Forbidden;
    }
    // The tag is there and this subject may not move it: no other token or login of the same
    // user changes that, and the 403 carries the reason to the client.
    if matches!(decision.reason, Reason::TagExists { .. }) && credential != Credential::None {
        return Answer::Forbidden;
    }
    match credential {
        Credential::None => Answer::Challenge,
        Credential::Basic => Answer::Forbidden,
        Credential::Token => Answer::InsufficientScope,
    }
}

/// Who a request is decided for: a user (`None`: anonymous) and the groups an identity source
/// (LDAP, OIDC) says the user is in, on top of the rules file's own groups.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user: Option<&'a str>,
    pub groups: &'a [String],
}

impl<'a> Subject<'a> {
    /// A user with the rules file's groups only.
    pub fn local(user: Option<&'a str>) -> Subject<'a> {
        Subject { user, groups: &[] }
    }
}

/// [`decide`], then [`answer`]. A token holder, anonymous too, may always
/// ping `/v2/`: docker pings with the token it just fetched before it pulls.
pub fn decide_and_answer(
    rules: &Rules,
    user: Option<&str>,
    credential: Credential,
    token_mode: bool,
    request: &AccessRequest,
) -> (Decision, Answer) {
    decide_and_answer_for(rules, &Subject::local(user), credential, token_mode, request, None)
}

/// The access key a request logged in with (directly, or through a token issued for it).
#[derive(Debug, Clone, Copy)]
pub struct KeyInUse<'a> {
    pub id: &'a str,
    pub scope: &'a KeyScope,
}

/// [`decide_and_answer`] for a subject with groups from an identity source, and for a request
/// that logged in with an access key: what the rules allow the owner is narrowed to the key's
/// scope (see [`narrow_to_scope`]).
pub fn decide_and_answer_for(
    rules: &Rules,
    subject: &Subject,
    credential: Credential,
    token_mode: bool,
    request: &AccessRequest,
    key: Option<KeyInUse>,
) -> (Decision, Answer) {
    let mut decision = decide_for(rules, subject, request);
    if let Some(key) = key {
        decision = narrow_to_scope(decision, key, subject.user, request);
    }
    if credential == Credential::Token && !decision.allowed && decision.docker == Some(DockerRoute::Base) {
        decision.allowed = true;
        decision.reason = Reason::PingForUsers;
    }
    let answer = answer(&decision, credential, token_mode);
    (decision, answer)
}

/// Narrows an allowed decision to an access key's scope: the key's actions must include the
/// request's action and its `on` expression must match the request (with the owner as
/// `user`); a blob mount must also be inside the scope as a read of its source, or a key
/// scoped to one repository could copy blobs in from any other its owner reads. The `/v2/`
/// ping needs only a valid key: it is how `docker login` checks credentials.
pub fn narrow_to_scope(mut decision: Decision, key: KeyInUse, user: Option<&str>, request: &AccessRequest) -> Decision {
    let outside = || Reason::OutsideKeyScope {
        key: key.id.to_string(),
    };
    if decision.allowed && decision.reason != Reason::PingForUsers {
        if let Some((name, tag)) = tag_put(request.method, decision.docker.as_ref()) {
            // The owner may create and move this tag; the key may hold only one of the two.
            decision.tag_check = Some(TagCheck {
                name: name.to_string(),
                tag: tag.to_string(),
                if_exists: Ok(decision.reason.clone()),
                if_new: Ok(decision.reason.clone()),
            });
            decision.allowed = false;
        }
    }
    if let Some(mut check) = decision.tag_check.take() {
        // Either outcome must be inside the scope too: moving the tag needs the key to hold
        // `overwrite`, creating it `edit`.
        let scope = inside_scope(&decision, key.scope, user, request);
        if !scope.on_ok || !key.scope.actions.contains(Action::Overwrite) {
            check.if_exists = check.if_exists.and(Err(outside()));
        }
        if !scope.all() {
            check.if_new = check.if_new.and(Err(outside()));
        }
        match (&check.if_exists, &check.if_new) {
            (Ok(granted), Ok(_)) => {
                decision.allowed = true;
                decision.reason = granted.clone();
            }
            (Err(_), Err(_)) => decision.reason = outside(),
            _ => decision.tag_check = Some(check),
        }
        return decision;
    }
    if !decision.allowed || decision.reason == Reason::PingForUsers {
        return decision;
    }
    if !inside_scope(&decision, key.scope, user, request).all() {
        decision.allowed = false;
        decision.reason = outside();
    }
    decision
}

/// How a request compares with an access key's scope, for [`narrow_to_scope`] and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScopeCheck {
    pub action_ok: bool,
    pub on_ok: bool,
    /// `None` when the request mounts no blob.
    pub mount_ok: Option<bool>,
}

impl ScopeCheck {
    pub(crate) fn all(&self) -> bool {
        self.action_ok && self.on_ok && self.mount_ok != Some(false)
    }
}

pub(crate) fn inside_scope(
    decision: &Decision,
    scope: &KeyScope,
    user: Option<&str>,
    request: &AccessRequest,
) -> ScopeCheck {
    let (Some(path), Some(action)) = (decision.path.as_deref(), decision.action) else {
        return ScopeCheck {
            action_ok: false,
            on_ok: false,
            mount_ok: None,
        };
    };
    let facts = Facts {
        format: request.format,
        path,
        method: request.method,
        user,
    };
    let action_ok = scope.actions.contains(action);
    let on_ok = scope.on.as_ref().is_none_or(|on| on.matches(&facts));
    let mut mount_ok = None;
    if matches!(decision.docker, Some(DockerRoute::BlobUploadStart { .. })) {
        // A mount source that does not parse was refused by `decide` already; fail closed anyway.
        mount_ok = match canonicalize(request.uri, request.format).map(|t| t.mount()) {
            Ok(Ok(None)) => None,
            Ok(Ok(Some(mount))) => {
                let source = mount.source_blob_path();
                Some(scope.allows(
                    Action::Read,
                    &Facts {
                        format: request.format,
                        path: &source,
                        method: "GET",
                        user,
                    },
                ))
            }
            _ => Some(false),
        };
    }
    ScopeCheck {
        action_ok,
        on_ok,
        mount_ok,
    }
}

fn deny(reason: Reason) -> Decision {
    Decision {
        allowed: false,
        reason,
        path: None,
        action: None,
        docker: None,
        tag_check: None,
    }
}

/// Decides one request for `user` (`None`: anonymous).
pub fn decide(rules: &Rules, user: Option<&str>, request: &AccessRequest) -> Decision {
    decide_for(rules, &Subject::local(user), request)
}

/// Decides one request for a subject with groups from an identity source. Those groups count
/// only for a user: anonymous has none.
pub fn decide_for(rules: &Rules, subject: &Subject, request: &AccessRequest) -> Decision {
    let user = subject.user;
    let groups = if user.is_some() { subject.groups } else { &[] };
    let target = match canonicalize(request.uri, request.format) {
        Ok(target) => target,
        Err(rejection) => return deny(Reason::BadPath(rejection)),
    };
    let Some(action) = Action::from_method(request.method) else {
        return deny(Reason::UnknownMethod(request.method.chars().take(32).collect()));
    };
    let mut decision = Decision {
        allowed: false,
        reason: Reason::NoGrant,
        path: None,
        action: Some(action),
        docker: target.docker.clone(),
        tag_check: None,
    };
    let facts = Facts {
        format: request.format,
        path: &target.path,
        method: request.method,
        user,
    };

    if let Some(reason) = docker_refusal(rules, user, groups, request, &target) {
        decision.reason = reason;
    } else if user.is_some() && target.docker == Some(DockerRoute::Base) {
        decision.allowed = true;
        decision.reason = Reason::PingForUsers;
    } else if let Some((name, tag)) = tag_put(request.method, target.docker.as_ref()) {
        let edit = rules.find_grant_for(user, groups, Action::Edit, &facts);
        let overwrite = rules.find_grant_for(user, groups, Action::Overwrite, &facts);
        match (edit, overwrite) {
            (None, None) => {}
            (Some(grant), Some(_)) => {
                decision.allowed = true;
                decision.reason = granted(grant);
            }
            (edit, overwrite) => {
                decision.tag_check = Some(TagCheck {
                    if_exists: overwrite.map(granted).ok_or_else(|| Reason::TagExists {
                        name: name.to_string(),
                        tag: tag.to_string(),
                    }),
                    if_new: edit.map(granted).ok_or_else(|| Reason::TagIsNew {
                        name: name.to_string(),
                        tag: tag.to_string(),
                    }),
                    name: name.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
    } else if let Some(grant) = rules.find_grant_for(user, groups, action, &facts) {
        decision.allowed = true;
        decision.reason = granted(grant);
    }
    decision.path = Some(target.path);
    decision
}

/// The repository and tag of a manifest `PUT` by tag (not by digest: content put by its digest
/// moves nothing).
fn tag_put<'t>(method: &str, route: Option<&'t DockerRoute>) -> Option<(&'t str, &'t str)> {
    match route {
        Some(DockerRoute::Manifest { name, reference }) if method == "PUT" && !reference.contains(':') => {
            Some((name, reference))
        }
        _ => None,
    }
}

fn granted(grant: &Grant) -> Reason {
    Reason::Granted {
        line: grant.line,
        grant: grant.text.clone(),
    }
}

/// The docker-specific refusals of a blob-upload start (form body, mount
/// parameters, mount source), if any.
fn docker_refusal(
    rules: &Rules,
    user: Option<&str>,
    groups: &[String],
    request: &AccessRequest,
    target: &crate::request::RequestTarget,
) -> Option<Reason> {
    if !matches!(target.docker, Some(DockerRoute::BlobUploadStart { .. })) {
        return None;
    }
    if request.method == "POST" && !is_upload_content_type(request.content_type) {
        return Some(Reason::FormBodyUpload);
    }
    match target.mount() {
        Err(rejection) => Some(Reason::BadMount(rejection)),
        Ok(None) => None,
        Ok(Some(mount)) => {
            let source = mount.source_blob_path();
            let facts = Facts {
                format: request.format,
                path: &source,
                method: "GET",
                user,
            };
            match rules.find_grant_for(user, groups, Action::Read, &facts) {
                Some(_) => None,
                None => Some(Reason::MountSourceDenied { from: mount.from }),
            }
        }
    }
}

/// Whether a blob upload may start with this Content-Type: none, or
/// `application/octet-stream` (any case, with parameters). An allow-list: the
/// registry parses a body of any type it takes for a form and reads `from`
/// from it, and nginx >= 1.23 joins repeated Content-Type headers with ", "
/// while the registry reads only the first, so a comma anywhere refuses.
fn is_upload_content_type(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return true;
    };
    if value.contains(',') {
        return false;
    }
    let media_type = value.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("application/octet-stream")
}

/// Why one grant did or did not match, for `explain`.
#[derive(Debug, Clone)]
pub(crate) struct GrantCheck {
    pub line: usize,
    pub grant: String,
    pub subject_ok: bool,
    pub action_ok: bool,
    /// Each target with whether it matched, and the comparisons inside it
    /// with their values.
    pub targets: Vec<TargetCheck>,
}

impl GrantCheck {
    pub(crate) fn matched(&self) -> bool {
        self.subject_ok && self.action_ok && self.targets.iter().any(|t| t.matched)
    }

    /// Larger is closer to matching.
    fn closeness(&self) -> u8 {
        u8::from(self.subject_ok) * 4 + u8::from(self.action_ok) * 2 + u8::from(self.targets.iter().any(|t| t.matched))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TargetCheck {
    pub text: String,
    pub matched: bool,
    pub comparisons: Vec<(String, bool)>,
}

/// A decision with the work shown.
#[derive(Debug, Clone)]
pub(crate) struct Explanation {
    pub decision: Decision,
    /// What the service would answer.
    pub answer: Answer,
    /// What the answer was worked out for (a tag check's two outcomes are answered alike).
    pub credential: Credential,
    pub token_mode: bool,
    pub user: Option<String>,
    /// The rules file's groups of the user.
    pub groups: Vec<String>,
    /// The groups an identity source (LDAP, OIDC) gave.
    pub external_groups: Vec<String>,
    /// Grants that allowed the request (all of them, not only the first).
    pub matched: Vec<GrantCheck>,
    /// When denied: the grants that came closest, closest first.
    pub closest: Vec<GrantCheck>,
    /// The access key's part, for a key login: its id, its scope as written, and how the request
    /// compares with it (`None` when the rules denied already, or for the ping, which needs
    /// only a valid key).
    pub key: Option<(String, String, Option<ScopeCheck>)>,
}

/// How many near misses `explain` shows.
const CLOSEST_SHOWN: usize = 5;

/// Decides and answers like [`decide_and_answer_for`] and records why every grant did or did not
/// match.
pub(crate) fn explain(
    rules: &Rules,
    subject: &Subject,
    credential: Credential,
    token_mode: bool,
    request: &AccessRequest,
    key: Option<KeyInUse>,
) -> Explanation {
    let user = subject.user;
    let external: &[String] = if user.is_some() { subject.groups } else { &[] };
    let (decision, answer) = decide_and_answer_for(rules, subject, credential, token_mode, request, key);
    let key = key.map(|k| {
        let owner_allowed = decide_for(rules, subject, request);
        let consulted = owner_allowed.allowed || owner_allowed.tag_check.is_some();
        let check = (consulted && owner_allowed.reason != Reason::PingForUsers)
            .then(|| inside_scope(&owner_allowed, k.scope, user, request));
        (k.id.to_string(), k.scope.to_string(), check)
    });
    let mut explanation = Explanation {
        key,
        answer,
        credential,
        token_mode,
        user: user.map(str::to_string),
        groups: user
            .map(|u| rules.groups_of(u).map(str::to_string).collect())
            .unwrap_or_default(),
        external_groups: external.to_vec(),
        matched: Vec::new(),
        closest: Vec::new(),
        decision,
    };
    let (Some(path), Some(action)) = (explanation.decision.path.clone(), explanation.decision.action) else {
        return explanation;
    };
    let facts = Facts {
        format: request.format,
        path: &path,
        method: request.method,
        user,
    };
    let mut checks: Vec<GrantCheck> = rules
        .grants()
        .iter()
        .map(|g| check_grant(rules, g, user, external, action, &facts))
        .collect();
    let (matched, mut missed): (Vec<_>, Vec<_>) = checks.drain(..).partition(GrantCheck::matched);
    explanation.matched = matched;
    if !explanation.decision.allowed {
        missed.sort_by_key(|c| std::cmp::Reverse(c.closeness()));
        missed.truncate(CLOSEST_SHOWN);
        explanation.closest = missed;
    }
    explanation
}

fn check_grant(
    rules: &Rules,
    grant: &Grant,
    user: Option<&str>,
    groups: &[String],
    action: Action,
    facts: &Facts,
) -> GrantCheck {
    GrantCheck {
        line: grant.line,
        grant: grant.text.clone(),
        subject_ok: grant.subjects.iter().any(|s| rules.subject_includes(s, user, groups)),
        action_ok: grant.actions.contains(action),
        targets: grant
            .targets
            .iter()
            .map(|t| TargetCheck {
                text: rules.target_text(t),
                matched: rules.target_matches(t, facts),
                comparisons: target_comparisons(rules, t, facts),
            })
            .collect(),
    }
}

fn target_comparisons(rules: &Rules, target: &Target, facts: &Facts) -> Vec<(String, bool)> {
    let expression = match target {
        Target::Everything => return Vec::new(),
        Target::Selector(i) => &rules.selectors()[*i].expression,
        Target::Inline(e) => e,
    };
    expression
        .root()
        .comparisons()
        .into_iter()
        .map(|c| {
            let single = crate::csel::Expression::new(Expr::Compare(c.clone()));
            (c.to_string(), single.matches(facts))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
selector library  = format == "docker" and path =^ "/v2/library/"
selector coolteam = format == "docker" and path =^ "/v2/coolteam/"
selector personal = path =^ "/v2/${user}/"
group coolteam = alice, bob
group admins = "admin-parente"
grant pull on library to anonymous
grant push on coolteam to @coolteam
grant * on personal to authenticated
grant * on * to @admins
"#;

    fn rules() -> Rules {
        Rules::parse("t.rules", RULES).unwrap()
    }

    fn check(user: Option<&str>, method: &str, uri: &str) -> Decision {
        decide(
            &rules(),
            user,
            &AccessRequest {
                method,
                uri,
                format: "docker",
                content_type: None,
            },
        )
    }

    #[test]
    fn seed_cases() {
        assert!(check(None, "GET", "/v2/library/alpine/manifests/3").allowed);
        assert!(!check(None, "PUT", "/v2/library/alpine/manifests/3").allowed);
        assert!(!check(None, "GET", "/v2/coolteam/app/manifests/1").allowed);
        assert!(check(Some("alice"), "PUT", "/v2/coolteam/app/manifests/1").allowed);
        assert!(!check(Some("alice"), "DELETE", "/v2/coolteam/app/manifests/1").allowed);
        assert!(!check(Some("carol"), "GET", "/v2/coolteam/app/manifests/1").allowed);
        assert!(check(Some("carol"), "GET", "/v2/library/alpine/tags/list").allowed);
        assert!(check(Some("carol"), "DELETE", "/v2/carol/x/manifests/1").allowed);
        assert!(!check(Some("carol"), "GET", "/v2/alice/x/manifests/1").allowed);
        assert!(check(Some("admin-parente"), "DELETE", "/v2/coolteam/app/manifests/1").allowed);
        assert!(
            !check(Some("admin-parente"), "GET", "/v2/_catalog").allowed,
            "* does not reach the catalog"
        );
        assert!(check(Some("carol"), "GET", "/v2/").allowed);
        assert!(!check(None, "GET", "/v2/").allowed);
        assert!(!check(Some("alice"), "TRACE", "/v2/coolteam/app/manifests/1").allowed);
        assert!(!check(Some("alice"), "GET", "/v2/coolteam/../secret/x/manifests/1").allowed);
    }

    #[test]
    fn mount_needs_read_on_source() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let ok = format!("/v2/coolteam/app/blobs/uploads/?mount={digest}&from=library/alpine");
        assert!(check(Some("alice"), "POST", &ok).allowed);
        let secret = format!("/v2/coolteam/app/blobs/uploads/?mount={digest}&from=secret/x");
        let d = check(Some("alice"), "POST", &secret);
        assert_eq!(
            d.reason,
            Reason::MountSourceDenied {
                from: "secret/x".into()
            }
        );
        let dup = format!("/v2/coolteam/app/blobs/uploads/?mount={digest}&from=library/alpine&from=secret/x");
        assert!(matches!(check(Some("alice"), "POST", &dup).reason, Reason::BadMount(_)));
        let form = decide(
            &rules(),
            Some("alice"),
            &AccessRequest {
                method: "POST",
                uri: "/v2/coolteam/app/blobs/uploads/",
                format: "docker",
                content_type: Some("application/x-www-form-urlencoded"),
            },
        );
        assert_eq!(form.reason, Reason::FormBodyUpload);
    }

    #[test]
    fn a_key_narrows_what_its_owner_may_do() {
        let keys = crate::access_keys::AccessKeys::parse(
            "t.keys",
            &format!(
                "key pull user=alice created=2026-01-01T00:00:00Z expires=never actions=pull sha256={h}\n\
                 key team user=alice created=2026-01-01T00:00:00Z expires=never on=(path =^ \"/v2/coolteam/\") \
                 sha256={h}\n",
                h = "a".repeat(64)
            ),
        )
        .unwrap();
        let rules = rules();
        let status = |id: &str, token_mode: bool, method: &str, uri: &str| {
            let key = keys.get(id).unwrap();
            let credential = if token_mode {
                Credential::Token
            } else {
                Credential::Basic
            };
            let request = AccessRequest {
                method,
                uri,
                format: "docker",
                content_type: None,
            };
            let key = Some(KeyInUse {
                id: &key.id,
                scope: &key.scope,
            });
            decide_and_answer_for(
                &rules,
                &Subject::local(Some("alice")),
                credential,
                token_mode,
                &request,
                key,
            )
        };
        let team = "/v2/coolteam/app/manifests/1";
        let (decision, answer) = status("pull", false, "PUT", team);
        assert_eq!(answer, Answer::Forbidden);
        assert_eq!(decision.reason, Reason::OutsideKeyScope { key: "pull".into() });
        assert_eq!(status("pull", true, "PUT", team).1, Answer::InsufficientScope);
        assert_eq!(status("pull", false, "GET", team).1, Answer::Allow);
        // The ping needs only a valid key; what the rules deny stays denied.
        assert_eq!(status("pull", false, "GET", "/v2/").1, Answer::Allow);
        assert_eq!(
            status("pull", false, "GET", "/v2/secret/x/manifests/1").0.reason,
            Reason::NoGrant
        );
        assert_eq!(status("team", false, "PUT", team).1, Answer::Allow);
        assert_eq!(
            status("team", false, "GET", "/v2/alice/x/manifests/1").1,
            Answer::Forbidden
        );
        // A mount's source must be inside the key's scope too.
        let digest = format!("sha256:{}", "a".repeat(64));
        let inside = format!("/v2/coolteam/app/blobs/uploads/?mount={digest}&from=coolteam/other");
        let outside = format!("/v2/coolteam/app/blobs/uploads/?mount={digest}&from=alice/x");
        assert_eq!(status("team", false, "POST", &inside).1, Answer::Allow);
        assert_eq!(status("team", false, "POST", &outside).1, Answer::Forbidden);
    }

    #[test]
    fn answers() {
        let rules = rules();
        let status = |user: Option<&str>, credential, token_mode, method, uri| {
            let request = AccessRequest {
                method,
                uri,
                format: "docker",
                content_type: None,
            };
            decide_and_answer(&rules, user, credential, token_mode, &request)
                .1
                .status()
        };
        use Credential::{Basic, None as Nothing, Token};
        let library = "/v2/library/alpine/manifests/3";
        let team = "/v2/coolteam/app/manifests/1";
        for (user, credential, token_mode, method, uri, expected) in [
            (None, Nothing, false, "GET", library, 200),
            (None, Nothing, false, "GET", team, 401),
            (None, Nothing, false, "GET", "/v2/../x", 403),
            (None, Nothing, false, "BREW", library, 403),
            (None, Nothing, false, "GET", "/v2/", 401),
            (Some("carol"), Basic, false, "GET", team, 403),
            (Some("carol"), Basic, false, "GET", "/v2/", 200),
            (None, Nothing, true, "GET", library, 401),
            (None, Nothing, true, "GET", "/v2/../x", 401),
            (None, Token, true, "GET", library, 200),
            (None, Token, true, "GET", team, 401),
            (None, Token, true, "GET", "/v2/", 200),
            (None, Token, true, "GET", "/v2/../x", 403),
            (Some("carol"), Token, true, "GET", team, 401),
            (Some("carol"), Basic, true, "GET", team, 403),
            (Some("alice"), Token, true, "PUT", team, 200),
        ] {
            assert_eq!(
                status(user, credential, token_mode, method, uri),
                expected,
                "{user:?} {credential:?} token mode {token_mode}: {method} {uri}"
            );
        }
    }

    const FEDERATED: &str = r#"
group ops = alice
grant push on (path =^ "/v2/ops/") to @ops
grant pull on (path =^ "/v2/dev/") to @developers
"#;

    fn federated(user: Option<&str>, groups: &[&str], method: &str, uri: &str) -> bool {
        let rules = Rules::parse_with(
            "t.rules",
            FEDERATED,
            crate::rules::RulesOptions { external_groups: true },
        )
        .unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let request = AccessRequest {
            method,
            uri,
            format: "docker",
            content_type: None,
        };
        decide_for(&rules, &Subject { user, groups: &groups }, &request).allowed
    }

    #[test]
    fn undefined_groups_need_an_identity_source() {
        let error = Rules::parse("t.rules", FEDERATED).unwrap_err().to_string();
        assert!(error.contains("unknown group `@developers`"), "{error}");
    }

    #[test]
    fn identity_source_groups_reach_their_grants_only() {
        let dev = "/v2/dev/app/manifests/1";
        let ops = "/v2/ops/app/manifests/1";
        assert!(federated(Some("carol"), &["developers"], "GET", dev));
        assert!(!federated(Some("carol"), &["developers"], "PUT", dev));
        // Another user, or the same one without the group, gets nothing from it.
        assert!(!federated(Some("dave"), &[], "GET", dev));
        assert!(!federated(Some("carol"), &["developer"], "GET", dev));
        // Anonymous has no groups, whatever is passed.
        assert!(!federated(None, &["developers"], "GET", dev));
        // Union: the local member and the source's member of `ops`.
        assert!(federated(Some("alice"), &[], "PUT", ops));
        assert!(federated(Some("bob"), &["ops"], "PUT", ops));
        assert!(!federated(Some("bob"), &["developers"], "PUT", ops));
        // The short form sees no source groups.
        let rules = Rules::parse_with(
            "t.rules",
            FEDERATED,
            crate::rules::RulesOptions { external_groups: true },
        )
        .unwrap();
        let request = AccessRequest {
            method: "GET",
            uri: dev,
            format: "docker",
            content_type: None,
        };
        assert!(!decide(&rules, Some("carol"), &request).allowed);
        let explained = explain(
            &rules,
            &Subject {
                user: Some("carol"),
                groups: &["developers".to_string()],
            },
            Credential::Basic,
            false,
            &request,
            None,
        );
        assert!(explained.decision.allowed);
        assert_eq!(explained.external_groups, ["developers"]);
        assert_eq!(explained.matched.len(), 1);
    }

    const TAG_RULES: &str = r#"
selector releases = path =^ "/v2/releases/"
selector moving = path =~ "/v2/releases/[^/]+/manifests/latest"
group ci = robot
grant pull, add, edit on releases to @ci
grant overwrite on moving to @ci
grant overwrite on releases to mover
grant push on releases to admin
"#;

    fn tag_decision(user: &str, method: &str, uri: &str, key: Option<(&str, &str)>) -> Decision {
        let rules = Rules::parse("t.rules", TAG_RULES).unwrap();
        let request = AccessRequest {
            method,
            uri,
            format: "docker",
            content_type: None,
        };
        let keys;
        let key = match key {
            None => None,
            Some((id, fields)) => {
                let text = format!(
                    "key {id} user={user} created=2026-11-29T05:00:00Z expires=never {fields} sha256={}",
                    "ab".repeat(32)
                );
                keys = crate::access_keys::AccessKeys::parse("keys", &text).unwrap();
                let k = keys.get(id).unwrap();
                Some(KeyInUse {
                    id: &k.id,
                    scope: &k.scope,
                })
            }
        };
        decide_and_answer_for(
            &rules,
            &Subject::local(Some(user)),
            Credential::Basic,
            false,
            &request,
            key,
        )
        .0
    }

    const V1: &str = "/v2/releases/app/manifests/v1";

    #[test]
    fn edit_alone_creates_a_tag_and_never_moves_one() {
        let pending = tag_decision("robot", "PUT", V1, None);
        // Undecided is denied: a caller that does not ask the registry refuses.
        assert!(!pending.allowed);
        let check = pending.tag_check.clone().unwrap();
        assert_eq!((check.name.as_str(), check.tag.as_str()), ("releases/app", "v1"));

        let new = pending.clone().settle(false);
        assert!(new.allowed, "{:?}", new.reason);
        assert_eq!(new.action, Some(Action::Edit));
        assert!(new.tag_check.is_none());

        let exists = pending.settle(true);
        assert!(!exists.allowed);
        assert_eq!(exists.action, Some(Action::Overwrite));
        assert_eq!(
            exists.reason,
            Reason::TagExists {
                name: "releases/app".into(),
                tag: "v1".into()
            }
        );
        // 403 with the reason, whether the client logged in or holds a token.
        assert_eq!(answer(&exists, Credential::Basic, false), Answer::Forbidden);
        assert_eq!(answer(&exists, Credential::Token, true), Answer::Forbidden);
    }

    #[test]
    fn overwrite_alone_moves_a_tag_and_never_creates_one() {
        let pending = tag_decision("mover", "PUT", V1, None);
        assert!(!pending.allowed);
        assert!(pending.clone().settle(true).allowed);
        let new = pending.settle(false);
        assert!(!new.allowed);
        assert!(matches!(new.reason, Reason::TagIsNew { .. }));
    }

    #[test]
    fn push_and_both_actions_need_no_tag_check() {
        for (user, uri) in [("admin", V1), ("robot", "/v2/releases/app/manifests/latest")] {
            let decision = tag_decision(user, "PUT", uri, None);
            assert!(decision.allowed, "{user} {uri}: {:?}", decision.reason);
            assert!(decision.tag_check.is_none());
            // Settling a decision without a check changes nothing.
            assert!(decision.settle(true).allowed);
        }
    }

    #[test]
    fn only_a_manifest_put_by_tag_is_checked() {
        let digest = format!("/v2/releases/app/manifests/sha256:{}", "a".repeat(64));
        let upload = "/v2/releases/app/blobs/uploads/6f1e2c8a-0d5e-4b7a-9c3e-1a2b3c4d5e6f?digest=sha256:aa";
        for uri in [digest.as_str(), upload] {
            let decision = tag_decision("robot", "PUT", uri, None);
            assert!(decision.allowed, "{uri}: {:?}", decision.reason);
            assert!(decision.tag_check.is_none(), "{uri}");
        }
        for method in ["GET", "HEAD", "DELETE"] {
            assert!(tag_decision("robot", method, V1, None).tag_check.is_none(), "{method}");
        }
        // Nothing granted: no check either.
        assert!(tag_decision("nobody", "PUT", V1, None).tag_check.is_none());
    }

    #[test]
    fn an_access_key_narrows_both_outcomes() {
        // The owner may create and move; a key with `edit` but not `overwrite` only creates.
        let key = tag_decision("admin", "PUT", V1, Some(("k", "actions=pull,add,edit")));
        assert!(!key.allowed);
        let check = key.tag_check.clone().unwrap();
        assert!(check.if_new.is_ok());
        assert_eq!(check.if_exists, Err(Reason::OutsideKeyScope { key: "k".into() }));
        assert!(key.clone().settle(false).allowed);
        assert!(!key.settle(true).allowed);
        // A push key keeps both: no check.
        let push = tag_decision("admin", "PUT", V1, Some(("k", "actions=push")));
        assert!(push.allowed && push.tag_check.is_none());
        // A pull key, or a key scoped elsewhere, has neither.
        for fields in ["actions=pull", r#"on=(path =^ "/v2/other/")"#] {
            let refused = tag_decision("admin", "PUT", V1, Some(("k", fields)));
            assert!(!refused.allowed && refused.tag_check.is_none(), "{fields}");
            assert_eq!(refused.reason, Reason::OutsideKeyScope { key: "k".into() });
        }
        // The rules' own check stays: robot's push key still cannot move v1.
        let robot = tag_decision("robot", "PUT", V1, Some(("k", "actions=push")));
        assert!(!robot.clone().settle(true).allowed);
        assert!(robot.settle(false).allowed);
    }
}
