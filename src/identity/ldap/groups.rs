//! A user's groups: the groups the user is a member of and, with `nested_groups`, the groups
//! those groups are members of, up to `MAX_NESTING` levels up. Each group is visited once, so
//! groups that are members of each other end the walk instead of looping.

use std::collections::{BTreeSet, HashSet};

use ldap3::{Scope, SearchEntry};

use super::connection::{Down, ServiceLink};
use super::settings::{GroupSource, LdapSettings};

/// Levels of groups-in-groups followed above the user's own groups.
pub const MAX_NESTING: usize = 8;
/// Groups one user may be in, nesting included; more is refused rather than truncated.
pub const MAX_GROUPS: usize = 1000;
/// Member DNs asked about in one search, as `(|filter1 filter2 ...)`.
const DNS_PER_SEARCH: usize = 32;

/// NoSuchObject: a memberOf value naming a group that was deleted since.
const NO_SUCH_OBJECT: u32 = 32;

/// The names of the groups of the user whose entry is `user`, sorted, without duplicates.
pub(crate) async fn groups_of(
    link: &ServiceLink,
    settings: &LdapSettings,
    user: &SearchEntry,
) -> Result<Vec<String>, Down> {
    let levels = if settings.nested_groups { 1 + MAX_NESTING } else { 1 };
    let names = match &settings.groups {
        GroupSource::None => BTreeSet::new(),
        GroupSource::Search { base, filter } => {
            let mut walk = Walk::new(&user.dn);
            let mut frontier = vec![user.dn.clone()];
            for _ in 0..levels {
                let mut next = Vec::new();
                for chunk in frontier.chunks(DNS_PER_SEARCH) {
                    let filter = match chunk {
                        [dn] => filter.fill(dn),
                        _ => format!("(|{})", chunk.iter().map(|dn| filter.fill(dn)).collect::<String>()),
                    };
                    let attributes = [settings.group_name_attribute.as_str()];
                    let limit = i32::try_from(MAX_GROUPS + 1).unwrap_or(i32::MAX);
                    let found = link
                        .search(base, Scope::Subtree, &filter, &attributes, limit, &[0, 4])
                        .await?;
                    if found.rc != 0 {
                        return Err(too_many(&user.dn));
                    }
                    for group in found.entries {
                        if walk.first_visit(&group.dn) {
                            walk.names
                                .extend(values(&group, &settings.group_name_attribute).cloned());
                            next.push(group.dn);
                        }
                    }
                    walk.check_size(&user.dn)?;
                }
                if next.is_empty() {
                    break;
                }
                frontier = next;
            }
            walk.names
        }
        GroupSource::MemberOf { attribute } => {
            let mut walk = Walk::new(&user.dn);
            let mut frontier: Vec<String> = values(user, attribute)
                .filter(|dn| walk.first_visit(dn))
                .cloned()
                .collect();
            for level in 0..levels {
                walk.check_size(&user.dn)?;
                let follow = level + 1 < levels;
                let mut next = Vec::new();
                for dn in &frontier {
                    let attributes = [settings.group_name_attribute.as_str(), attribute.as_str()];
                    let found = link
                        .search(dn, Scope::Base, "(objectClass=*)", &attributes, 1, &[0, NO_SUCH_OBJECT])
                        .await?;
                    for group in &found.entries {
                        walk.names
                            .extend(values(group, &settings.group_name_attribute).cloned());
                        if follow {
                            next.extend(values(group, attribute).filter(|dn| walk.first_visit(dn)).cloned());
                        }
                    }
                }
                if next.is_empty() {
                    break;
                }
                frontier = next;
            }
            walk.names
        }
    };
    Ok(names.into_iter().collect())
}

/// The groups seen so far (by DN) and their names.
struct Walk {
    seen: HashSet<String>,
    names: BTreeSet<String>,
}

impl Walk {
    fn new(user_dn: &str) -> Walk {
        Walk {
            seen: HashSet::from([normalize(user_dn)]),
            names: BTreeSet::new(),
        }
    }

    fn first_visit(&mut self, dn: &str) -> bool {
        self.seen.insert(normalize(dn))
    }

    fn check_size(&self, user_dn: &str) -> Result<(), Down> {
        // `seen` holds the user too.
        if self.seen.len() > MAX_GROUPS + 1 {
            return Err(too_many(user_dn));
        }
        Ok(())
    }
}

fn too_many(user_dn: &str) -> Down {
    Down(format!(
        "{user_dn} is in more than {MAX_GROUPS} groups: refused rather than cut short"
    ))
}

/// DNs differ only in case where the directory is consistent, and attribute types are
/// case-insensitive: enough to recognise a group seen before.
fn normalize(dn: &str) -> String {
    dn.to_ascii_lowercase()
}

/// The values of `attribute` (compared case-insensitively, as LDAP does).
pub(crate) fn values<'a>(entry: &'a SearchEntry, attribute: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    entry
        .attrs
        .iter()
        .filter(move |(name, _)| name.eq_ignore_ascii_case(attribute))
        .flat_map(|(_, values)| values.iter())
}
