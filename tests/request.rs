//! Path canonicalization and docker routes, driven by the cases in `tests/data/paths.txt`:
//! `accept|reject FORMAT URI [-> EXPECTATION...]`.

use std::collections::HashMap;

use csel_auth::request::{canonicalize, DockerRoute, Mount, RequestTarget};

use crate::kit::cases::{expand, CaseFile};

fn take<'a>(tokens: &mut impl Iterator<Item = &'a str>, what: &str) -> Result<String, String> {
    tokens
        .next()
        .ok_or_else(|| format!("expectation `{what}` needs more arguments"))
        .and_then(|token| expand(token, &HashMap::new()))
}

/// Checks one accepted target against the expectation tokens after `->`.
fn check_expectations<'a>(target: &RequestTarget, mut tokens: impl Iterator<Item = &'a str>) -> Result<(), String> {
    while let Some(keyword) = tokens.next() {
        let expected_route = match keyword {
            "base" => Some(Some(DockerRoute::Base)),
            "catalog" => Some(Some(DockerRoute::Catalog)),
            "generic" => Some(None),
            "tags" => Some(Some(DockerRoute::TagsList {
                name: take(&mut tokens, keyword)?,
            })),
            "manifest" => Some(Some(DockerRoute::Manifest {
                name: take(&mut tokens, keyword)?,
                reference: take(&mut tokens, keyword)?,
            })),
            "blob" => Some(Some(DockerRoute::Blob {
                name: take(&mut tokens, keyword)?,
                digest: take(&mut tokens, keyword)?,
            })),
            "upload-start" => Some(Some(DockerRoute::BlobUploadStart {
                name: take(&mut tokens, keyword)?,
            })),
            "upload" => Some(Some(DockerRoute::BlobUpload {
                name: take(&mut tokens, keyword)?,
                session: take(&mut tokens, keyword)?,
            })),
            "referrers" => Some(Some(DockerRoute::Referrers {
                name: take(&mut tokens, keyword)?,
                digest: take(&mut tokens, keyword)?,
            })),
            _ => None,
        };
        if let Some(expected) = expected_route {
            if target.docker != expected {
                return Err(format!("route {:?}, expected {expected:?}", target.docker));
            }
            continue;
        }
        match keyword {
            "path" => {
                let expected = take(&mut tokens, keyword)?;
                if target.path != expected {
                    return Err(format!("path {:?}, expected {expected:?}", target.path));
                }
            }
            "param" => {
                let key = take(&mut tokens, keyword)?;
                let value = take(&mut tokens, keyword)?;
                if !target.query.contains(&(key.clone(), value.clone())) {
                    return Err(format!("query {:?} lacks ({key:?}, {value:?})", target.query));
                }
            }
            "params" => {
                let count: usize = take(&mut tokens, keyword)?
                    .parse()
                    .map_err(|_| "params needs a number".to_string())?;
                if target.query.len() != count {
                    return Err(format!("query {:?}, expected {count} pairs", target.query));
                }
            }
            "no-mount" => {
                if target.mount() != Ok(None) {
                    return Err(format!("mount {:?}, expected Ok(None)", target.mount()));
                }
            }
            "mount-error" => {
                if target.mount().is_ok() {
                    return Err(format!("mount {:?}, expected an error", target.mount()));
                }
            }
            "mount" => {
                let expected = Mount {
                    digest: take(&mut tokens, keyword)?,
                    from: take(&mut tokens, keyword)?,
                };
                if target.mount() != Ok(Some(expected.clone())) {
                    return Err(format!("mount {:?}, expected {expected:?}", target.mount()));
                }
            }
            other => return Err(format!("unknown expectation `{other}`")),
        }
    }
    Ok(())
}

fn check_case(line: &str) -> Result<(), String> {
    let mut tokens = line.split_whitespace();
    let (Some(verdict), Some(format), Some(uri)) = (tokens.next(), tokens.next(), tokens.next()) else {
        return Err("expected `accept|reject FORMAT URI [-> ...]`".to_string());
    };
    let uri = expand(uri, &HashMap::new())?;
    let mut rest = tokens.peekable();
    match rest.next() {
        None | Some("->") => {}
        Some(other) => return Err(format!("expected `->`, found `{other}`")),
    }
    let outcome = canonicalize(&uri, format);
    match (verdict, outcome) {
        ("accept", Ok(target)) => check_expectations(&target, rest),
        ("accept", Err(rejection)) => Err(format!("rejected: {rejection}")),
        ("reject", Ok(target)) => Err(format!("accepted: {target:?}")),
        ("reject", Err(rejection)) => {
            let wanted = rest.collect::<Vec<_>>().join(" ");
            if rejection.to_string().contains(&wanted) {
                Ok(())
            } else {
                Err(format!(
                    "rejected for `{rejection}`, expected a reason containing `{wanted}`"
                ))
            }
        }
        (other, _) => Err(format!("verdict must be accept or reject, not `{other}`")),
    }
}

#[test]
fn path_cases_from_data_file() {
    CaseFile::read("paths.txt").check_all(120, |case| check_case(case.line.trim()));
}

#[test]
fn the_case_checker_itself_reports_wrong_expectations() {
    assert!(check_case("accept docker /v2/a/manifests/1 -> manifest b 1").is_err());
    assert!(check_case("accept docker /v2/a/manifests/1 -> tags a").is_err());
    assert!(check_case("reject docker /v2/a/manifests/1").is_err());
    assert!(check_case("accept docker /v2/a/../b").is_err());
    assert!(check_case("reject docker /v2/a/../b -> backslash").is_err());
    assert!(check_case("accept raw /x -> bogus").is_err());
    assert!(check_case("accept docker /v2/{a*3}/manifests/1 -> manifest aaa 1").is_ok());
}
