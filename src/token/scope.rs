//! Resource scopes, `kind:name:action,action`, as the token endpoint is asked
//! for them and as the `access` claim lists them.

use std::fmt;

/// Most distinct scopes [`parse_scopes`] keeps; further ones are ignored.
pub(crate) const MAX_SCOPES: usize = 16;
/// Longest resource name accepted in a scope (OCI limits names to 255).
pub(crate) const MAX_SCOPE_NAME_LEN: usize = 255;
/// Most distinct actions accepted in one scope; more makes the scope malformed.
pub(crate) const MAX_ACTIONS_PER_SCOPE: usize = 8;

/// One resource scope, `kind:name:action,action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `repository` or `registry` (any `[a-z0-9]+` type, optionally with a
    /// `(class)`, is parsed; the caller decides what it grants).
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// Space-separated scope list, as in the OAuth `scope` response field.
pub(crate) fn format_scopes(scopes: &[Scope]) -> String {
    scopes.iter().map(Scope::to_string).collect::<Vec<_>>().join(" ")
}

/// Parses `scope` parameter values. Each value may hold several
/// space-separated scopes. The type ends at the first `:` and the actions
/// start after the last one, so names may contain `host:port`. Malformed
/// scopes are ignored; scopes naming the same resource are merged (actions in
/// first-seen order, without duplicates); at most [`MAX_SCOPES`] are kept.
pub fn parse_scopes(values: &[&str]) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = Vec::new();
    for item in values.iter().flat_map(|value| value.split(' ')) {
        let Some(scope) = parse_one_scope(item) else {
            continue;
        };
        if let Some(existing) = scopes
            .iter_mut()
            .find(|known| known.kind == scope.kind && known.name == scope.name)
        {
            for action in scope.actions {
                if !existing.actions.contains(&action) && existing.actions.len() < MAX_ACTIONS_PER_SCOPE {
                    existing.actions.push(action);
                }
            }
        } else if scopes.len() < MAX_SCOPES {
            scopes.push(scope);
        }
    }
    scopes
}

fn parse_one_scope(item: &str) -> Option<Scope> {
    let (kind, rest) = item.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if !is_resource_type(kind) || !is_resource_name(name) {
        return None;
    }
    let mut parsed: Vec<String> = Vec::new();
    for action in actions.split(',') {
        let valid = action == "*" || (!action.is_empty() && action.bytes().all(|b| b.is_ascii_lowercase()));
        if !valid {
            return None;
        }
        if !parsed.iter().any(|known| known == action) {
            parsed.push(action.to_string());
        }
    }
    if parsed.len() > MAX_ACTIONS_PER_SCOPE {
        return None;
    }
    Some(Scope {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: parsed,
    })
}

/// `resourcetype := [a-z0-9]+ [ '(' [a-z0-9]+ ')' ]` (distribution scope grammar).
fn is_resource_type(kind: &str) -> bool {
    let is_value =
        |value: &str| !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match kind.split_once('(') {
        None => is_value(kind),
        Some((base, class)) => is_value(base) && class.strip_suffix(')').is_some_and(is_value),
    }
}

fn is_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SCOPE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
}
