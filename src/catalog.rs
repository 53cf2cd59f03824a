//! The repository list (`GET /v2/_catalog`) as one caller may see it: the registry's names
//! kept to those the caller may read, then cut into the page the query asks for. Pure: the
//! service reads the registry and the request, this module knows neither.
//!
//! A repository is shown when the caller may read its tag list (`GET /v2/NAME/tags/list`)
//! under the current rules, and, for a caller that logged in with an access key, when the key's
//! scope allows that read too. What shows a repository is therefore exactly what lets the caller
//! list its tags: the catalog reveals no name the caller could not already probe.

use crate::access_keys::KeyScope;
use crate::csel::Facts;
use crate::decision::Subject;
use crate::request::docker::is_valid_repository_name;
use crate::rules::{Action, Rules};

/// Page size when the query names none, as the registry's own default.
pub const DEFAULT_PAGE: usize = 100;
/// The largest `n` accepted, as the registry's default `catalog.maxentries`.
pub const MAX_PAGE: usize = 1000;

/// The names of `names` (sorted, as the registry's list is) that `subject` may read, narrowed
/// to `key`'s scope when the caller logged in with an access key. Names that are not docker
/// repository names are dropped: no path could address them, so no rule can be said to allow
/// them.
pub fn visible<'n>(rules: &Rules, subject: &Subject, key: Option<&KeyScope>, names: &'n [String]) -> Vec<&'n str> {
    let user = subject.user;
    // An identity source's groups count only for a user, as in every decision.
    let groups: &[String] = if user.is_some() { subject.groups } else { &[] };
    let mut path = String::with_capacity(64);
    names
        .iter()
        .map(String::as_str)
        .filter(|name| {
            if !is_valid_repository_name(name) {
                return false;
            }
            path.clear();
            path.push_str("/v2/");
            path.push_str(name);
            path.push_str("/tags/list");
            let facts = Facts {
                format: "docker",
                path: &path,
                method: "GET",
                user,
            };
            rules.find_grant_for(user, groups, Action::Read, &facts).is_some()
                && key.is_none_or(|scope| scope.allows(Action::Read, &facts))
        })
        .collect()
}

/// The pagination a catalog request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// `n`: at most this many names; `None` for [`DEFAULT_PAGE`].
    pub n: Option<usize>,
    /// `last`: only names after this one (it need not be in the list).
    pub last: Option<String>,
}

/// A catalog query that cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("n `{0}`: expected a whole number from 0 to {MAX_PAGE}")]
    BadNumber(String),
    #[error("`{0}` is given more than once")]
    Repeated(&'static str),
    #[error("`{0}` is not percent-encoded UTF-8")]
    BadEncoding(&'static str),
}

impl PageError {
    /// The distribution API error code.
    pub fn code(&self) -> &'static str {
        match self {
            PageError::BadNumber(_) => "PAGINATION_NUMBER_INVALID",
            PageError::Repeated(_) | PageError::BadEncoding(_) => "UNSUPPORTED",
        }
    }
}

/// Reads `n` and `last` from the query (other parameters are ignored, as the registry does).
/// A repeated parameter is refused rather than one of its values picked.
pub fn parse_query(query: Option<&str>) -> Result<PageRequest, PageError> {
    let mut request = PageRequest::default();
    let mut seen_n = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = |what: &'static str| {
            crate::percent::decode(value, true, &[])
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(PageError::BadEncoding(what))
        };
        match name {
            "n" => {
                if seen_n {
                    return Err(PageError::Repeated("n"));
                }
                seen_n = true;
                let text = decoded("n")?;
                // Digits only: `+5`, ` 5` and `5.0` are refused, not read leniently.
                let n = (!text.is_empty() && text.len() <= 7 && text.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| text.parse::<usize>().ok())
                    .flatten()
                    .filter(|n| *n <= MAX_PAGE)
                    .ok_or_else(|| PageError::BadNumber(text.chars().take(32).collect()))?;
                request.n = Some(n);
            }
            "last" => {
                if request.last.is_some() {
                    return Err(PageError::Repeated("last"));
                }
                request.last = Some(decoded("last")?);
            }
            _ => {}
        }
    }
    Ok(request)
}

/// One page of a list, and the target of the next page's link when more names follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<'a> {
    pub repositories: &'a [&'a str],
    /// `/v2/_catalog?last=NAME&n=N` (NAME escaped), for `Link: <…>; rel="next"`.
    pub next: Option<String>,
}

/// The names of `names` (sorted) after `last`, at most `n` of them.
pub fn page<'a>(names: &'a [&'a str], request: &PageRequest) -> Page<'a> {
    let n = request.n.unwrap_or(DEFAULT_PAGE);
    let start = match &request.last {
        None => 0,
        Some(last) => names.partition_point(|name| *name <= last.as_str()),
    };
    let rest = &names[start..];
    let repositories = &rest[..rest.len().min(n)];
    let next = match repositories.last() {
        Some(last) if rest.len() > repositories.len() => {
            Some(format!("/v2/_catalog?last={}&n={n}", encode_query_value(last)))
        }
        _ => None,
    };
    Page { repositories, next }
}

/// `{"repositories":[...]}`.
pub fn page_json(page: &Page) -> String {
    serde_json::json!({ "repositories": page.repositories }).to_string()
}

/// Escaped as the registry escapes its own links (`last=library%2Fa`): only unreserved
/// characters stay, so the link stays one query value whatever the name.
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Subject;

    const RULES: &str = r#"
selector library  = format == "docker" and path =^ "/v2/library/"
selector coolteam = format == "docker" and path =^ "/v2/coolteam/"
selector personal = format == "docker" and path =^ "/v2/${user}/"
group coolteam = alice, bob
grant pull on library  to anonymous
grant push on coolteam to @coolteam
grant *    on personal to authenticated
grant read on (path =^ "/v2/ldapteam/") to @ldap-team
"#;

    fn names() -> Vec<String> {
        let mut names: Vec<String> = [
            "alice/secret",
            "alice/tools",
            "carol/y",
            "coolteam/app",
            "coolteam/web",
            "ldapteam/x",
            "library/a",
            "library/b",
            "library/c",
            // Not docker names: never shown, whatever the rules say.
            "library/UPPER",
            "library/a..b",
            "library/-x",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.sort();
        names
    }

    fn rules() -> Rules {
        Rules::parse_with("t.rules", RULES, crate::rules::RulesOptions { external_groups: true }).unwrap()
    }

    fn seen(user: Option<&str>, groups: &[String], key: Option<&KeyScope>) -> Vec<String> {
        let names = names();
        visible(&rules(), &Subject { user, groups }, key, &names)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn each_caller_sees_what_it_may_read() {
        assert_eq!(seen(None, &[], None), ["library/a", "library/b", "library/c"]);
        assert_eq!(
            seen(Some("alice"), &[], None),
            [
                "alice/secret",
                "alice/tools",
                "coolteam/app",
                "coolteam/web",
                "library/a",
                "library/b",
                "library/c"
            ]
        );
        assert_eq!(
            seen(Some("carol"), &[], None),
            ["carol/y", "library/a", "library/b", "library/c"]
        );
        let ldap = vec!["ldap-team".to_string()];
        assert_eq!(
            seen(Some("dave"), &ldap, None),
            ["ldapteam/x", "library/a", "library/b", "library/c"]
        );
        // Anonymous has no groups, whatever it is handed.
        assert_eq!(seen(None, &ldap, None), ["library/a", "library/b", "library/c"]);
    }

    #[test]
    fn an_access_key_narrows_the_list_to_its_scope() {
        let keys = crate::access_keys::AccessKeys::parse(
            "t.keys",
            &format!(
                "key ci user=alice created=2026-01-01T00:00:00Z expires=never actions=pull on=(path =^ \"/v2/coolteam/\") sha256={h}\n\
                 key push user=bob created=2026-01-01T00:00:00Z expires=never actions=push sha256={h}\n\
                 key write user=bob created=2026-01-01T00:00:00Z expires=never actions=add sha256={h}\n",
                h = "a".repeat(64)
            ),
        )
        .unwrap();
        let scoped = &keys.get("ci").unwrap().scope;
        assert_eq!(seen(Some("alice"), &[], Some(scoped)), ["coolteam/app", "coolteam/web"]);
        let unscoped = &keys.get("push").unwrap().scope;
        assert_eq!(
            seen(Some("bob"), &[], Some(unscoped)),
            ["coolteam/app", "coolteam/web", "library/a", "library/b", "library/c"]
        );
        // A key that may not read shows nothing.
        assert!(seen(Some("bob"), &[], Some(&keys.get("write").unwrap().scope)).is_empty());
    }

    fn walk(names: &[&str], n: Option<usize>, last: Option<&str>) -> (Vec<String>, Option<String>) {
        let request = PageRequest {
            n,
            last: last.map(str::to_string),
        };
        let page = page(names, &request);
        (page.repositories.iter().map(|s| s.to_string()).collect(), page.next)
    }

    #[test]
    fn pages_follow_n_and_last() {
        let names = ["a", "b", "c", "d", "e"];
        assert_eq!(walk(&names, None, None), (names.map(str::to_string).to_vec(), None));
        assert_eq!(
            walk(&names, Some(2), None),
            (vec!["a".into(), "b".into()], Some("/v2/_catalog?last=b&n=2".into()))
        );
        assert_eq!(
            walk(&names, Some(2), Some("b")),
            (vec!["c".into(), "d".into()], Some("/v2/_catalog?last=d&n=2".into()))
        );
        // The last page has no link, also when it is exactly full.
        assert_eq!(walk(&names, Some(1), Some("d")), (vec!["e".into()], None));
        assert_eq!(walk(&names, Some(2), Some("d")), (vec!["e".into()], None));
        // `last` need not be in the list: the names after it in order.
        assert_eq!(
            walk(&names, Some(2), Some("bb")),
            (vec!["c".into(), "d".into()], Some("/v2/_catalog?last=d&n=2".into()))
        );
        assert_eq!(walk(&names, Some(2), Some("zzz")), (vec![], None));
        assert_eq!(walk(&names, Some(2), Some("")), walk(&names, Some(2), None));
        // n=0: an empty list and no link, as the registry answers.
        assert_eq!(walk(&names, Some(0), None), (vec![], None));
        assert_eq!(
            walk(&names, Some(MAX_PAGE), None),
            (names.map(str::to_string).to_vec(), None)
        );
        assert_eq!(walk(&[], Some(3), None), (vec![], None));
    }

    #[test]
    fn following_the_links_walks_every_name_once() {
        // Names with `/`, escaped in the links and read back.
        let owned: Vec<String> = (0..23).map(|i| format!("r/{i:03}")).collect();
        let names: Vec<&str> = owned.iter().map(String::as_str).collect();
        for n in 1..=24 {
            let mut request = PageRequest { n: Some(n), last: None };
            let mut seen = Vec::new();
            loop {
                let page = page(&names, &request);
                seen.extend(page.repositories.iter().copied());
                let Some(next) = page.next else { break };
                let query = next.strip_prefix("/v2/_catalog?").unwrap();
                request = parse_query(Some(query)).unwrap();
            }
            assert_eq!(seen, names, "n={n}");
        }
    }

    #[test]
    fn the_query_is_read_strictly() {
        assert_eq!(parse_query(None), Ok(PageRequest::default()));
        assert_eq!(parse_query(Some("")), Ok(PageRequest::default()));
        assert_eq!(
            parse_query(Some("n=2&last=library%2Fa&x=y")),
            Ok(PageRequest {
                n: Some(2),
                last: Some("library/a".into())
            })
        );
        assert_eq!(parse_query(Some("n=0")).unwrap().n, Some(0));
        assert_eq!(parse_query(Some("n=1000")).unwrap().n, Some(1000));
        for bad in [
            "n=1001",
            "n=-1",
            "n=abc",
            "n=",
            "n",
            "n=+5",
            "n=%205",
            "n=99999999999999999999999",
        ] {
            let error = parse_query(Some(bad)).unwrap_err();
            assert!(matches!(error, PageError::BadNumber(_)), "{bad}: {error:?}");
            assert_eq!(error.code(), "PAGINATION_NUMBER_INVALID");
        }
        assert_eq!(parse_query(Some("n=1&n=2")), Err(PageError::Repeated("n")));
        assert_eq!(parse_query(Some("last=a&last=b")), Err(PageError::Repeated("last")));
        assert_eq!(parse_query(Some("last=%zz")), Err(PageError::BadEncoding("last")));
        assert_eq!(parse_query(Some("last=%ff")), Err(PageError::BadEncoding("last")));
    }

    #[test]
    fn the_answer_is_the_distribution_format() {
        let names = ["library/a", "library/b"];
        let page = page(&names, &PageRequest::default());
        assert_eq!(page_json(&page), r#"{"repositories":["library/a","library/b"]}"#);
        assert_eq!(
            page_json(&Page {
                repositories: &[],
                next: None
            }),
            r#"{"repositories":[]}"#
        );
        assert_eq!(encode_query_value("a/b-c.d_e"), "a%2Fb-c.d_e");
        assert_eq!(encode_query_value("a&n=1 b"), "a%26n%3D1%20b");
    }
}
