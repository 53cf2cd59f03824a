use proptest::prelude::*;
use regex::Regex;

use super::docker::is_valid_tag;
use super::*;

#[test]
fn inputs_the_data_file_cannot_spell() {
    for uri in ["", " /v2/", "\t/v2/", "/v2/\n", "/v2/a\u{0}/manifests/1", "/v2/\u{7f}"] {
        assert!(canonicalize(uri, "docker").is_err(), "{uri:?} accepted");
    }
    for uri in ["/v2/é/manifests/1", "/v2/a\u{ff0e}\u{ff0e}/x", "/files/\u{2215}etc"] {
        let rejection = canonicalize(uri, "raw").err();
        assert!(
            rejection.as_ref() == Some(&Rejection::NonAscii),
            "{uri:?}: {rejection:?}"
        );
    }
    let target = canonicalize("/files/a%20b?q=left+pad&x=%2B%20", "raw");
    assert_eq!(
        target,
        Ok(RequestTarget {
            path: "/files/a b".to_string(),
            query: vec![
                ("q".to_string(), "left pad".to_string()),
                ("x".to_string(), "+ ".to_string()),
            ],
            docker: None,
        })
    );
    let target = canonicalize("/v2/a/tags/list?flag&=v&k=", "docker");
    assert_eq!(
        target.map(|t| t.query),
        Ok(vec![
            ("flag".to_string(), String::new()),
            (String::new(), "v".to_string()),
            ("k".to_string(), String::new()),
        ])
    );
}

#[test]
fn repository_of_each_route() {
    let repository = |uri: &str| {
        canonicalize(uri, "docker")
            .ok()
            .and_then(|t| t.docker)
            .and_then(|route| route.repository().map(str::to_string))
    };
    assert_eq!(repository("/v2/"), None);
    assert_eq!(repository("/v2/_catalog"), None);
    assert_eq!(repository("/v2/a/b/tags/list").as_deref(), Some("a/b"));
    assert_eq!(repository("/v2/a/blobs/uploads/").as_deref(), Some("a"));
    assert_eq!(repository("/v2/a/blobs/uploads/u-1").as_deref(), Some("a"));
}

#[test]
fn mount_source_blob_path_is_itself_a_valid_blob_route() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let uri = format!("/v2/team/app/blobs/uploads/?mount={digest}&from=library/alpine");
    let mount = canonicalize(&uri, "docker").and_then(|t| t.mount());
    let Ok(Some(mount)) = mount else {
        panic!("no mount in {uri}: {mount:?}");
    };
    let source = canonicalize(&mount.source_blob_path(), "docker").map(|t| t.docker);
    assert_eq!(
        source,
        Ok(Some(DockerRoute::Blob {
            name: "library/alpine".to_string(),
            digest
        }))
    );
}

// ---- independent oracle: the grammars and distribution's anchored route regexes ----

const COMPONENT: &str = "[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
const TAG: &str = "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}";
const DIGEST: &str = "[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+";

fn anchored(pattern: &str) -> Regex {
    Regex::new(&format!("^(?:{pattern})$")).unwrap_or_else(|e| panic!("{pattern}: {e}"))
}

fn name_pattern() -> String {
    format!("{COMPONENT}(?:/{COMPONENT})*")
}

fn oracle_name(name: &str) -> bool {
    name.len() <= 255 && anchored(&name_pattern()).is_match(name)
}

fn oracle_digest(digest: &str) -> bool {
    let sha_ok = match digest.split_once(':') {
        Some(("sha256", hex)) => anchored("[a-f0-9]{64}").is_match(hex),
        Some(("sha512", hex)) => anchored("[a-f0-9]{128}").is_match(hex),
        _ => true,
    };
    digest.len() <= MAX_DIGEST_BYTES && sha_ok && anchored(DIGEST).is_match(digest)
}

fn oracle_tag(tag: &str) -> bool {
    anchored(TAG).is_match(tag)
}

/// distribution's routes as gorilla/mux compiles them, tried in its registration order.
fn oracle_route(path: &str) -> Option<DockerRoute> {
    let name = name_pattern();
    let session = "[a-zA-Z0-9._=-]+";
    let capture = |pattern: String| -> Option<Vec<String>> {
        let captures = anchored(&pattern).captures(path)?;
        Some(
            captures
                .iter()
                .skip(1)
                .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
                .collect(),
        )
    };
    let route = if path == "/v2/" {
        DockerRoute::Base
    } else if let Some(c) = capture(format!("/v2/({name})/tags/list")) {
        DockerRoute::TagsList { name: c[0].clone() }
    } else if let Some(c) = capture(format!("/v2/({name})/manifests/({TAG}|{DIGEST})")) {
        if !oracle_tag(&c[1]) && !oracle_digest(&c[1]) {
            return None;
        }
        DockerRoute::Manifest {
            name: c[0].clone(),
            reference: c[1].clone(),
        }
    } else if let Some(c) = capture(format!("/v2/({name})/blobs/({DIGEST})")) {
        if !oracle_digest(&c[1]) {
            return None;
        }
        DockerRoute::Blob {
            name: c[0].clone(),
            digest: c[1].clone(),
        }
    } else if let Some(c) = capture(format!("/v2/({name})/blobs/uploads/")) {
        DockerRoute::BlobUploadStart { name: c[0].clone() }
    } else if let Some(c) = capture(format!("/v2/({name})/blobs/uploads/({session})")) {
        if c[1].len() > MAX_UPLOAD_SESSION_BYTES {
            return None;
        }
        DockerRoute::BlobUpload {
            name: c[0].clone(),
            session: c[1].clone(),
        }
    } else if let Some(c) = capture(format!("/v2/({name})/referrers/({DIGEST})")) {
        if !oracle_digest(&c[1]) {
            return None;
        }
        DockerRoute::Referrers {
            name: c[0].clone(),
            digest: c[1].clone(),
        }
    } else if path == "/v2/_catalog" {
        DockerRoute::Catalog
    } else {
        return None;
    };
    match route.repository() {
        Some(repository) if !oracle_name(repository) => None,
        _ => Some(route),
    }
}

/// Paths built from the words that make routing ambiguous, plus hostile pieces: half of them
/// end in a route's fixed tail so that accepted routes are common.
fn docker_like_path() -> impl Strategy<Value = String> {
    let sha256 = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let plain: Vec<String> = [
        "v2",
        "a",
        "library",
        "manifests",
        "blobs",
        "uploads",
        "tags",
        "list",
        "referrers",
        "latest",
        "a-b",
        "a__b",
        "1.0",
        "u-u-i-d=",
        "%61",
    ]
    .iter()
    .map(|w| w.to_string())
    .chain([sha256.clone()])
    .collect();
    let odd: Vec<String> = [
        "_catalog",
        "",
        "Latest",
        "a._b",
        "-a",
        ".",
        "..",
        "%2e%2e",
        "a;b",
        "sha256:abc",
    ]
    .iter()
    .map(|w| w.to_string())
    .chain([format!("{sha256}0"), "x".repeat(130)])
    .collect();
    let segment = prop_oneof![
        6 => prop::sample::select(plain),
        1 => prop::sample::select(odd),
    ];
    let tail = prop::sample::select(vec![
        vec![],
        vec!["tags".to_string(), "list".to_string()],
        vec!["manifests".to_string()],
        vec!["blobs".to_string()],
        vec!["blobs".to_string(), "uploads".to_string()],
        vec!["blobs".to_string(), "uploads".to_string(), String::new()],
        vec!["referrers".to_string()],
        vec!["blobs".to_string(), sha256.clone()],
        vec!["referrers".to_string(), sha256.clone()],
    ]);
    (
        prop::collection::vec(segment.clone(), 0..6),
        tail,
        prop::collection::vec(segment, 0..2),
    )
        .prop_map(|(head, tail, last)| {
            let mut path = String::from("/v2");
            for segment in head.iter().chain(&tail).chain(&last) {
                path.push('/');
                path.push_str(segment);
            }
            path
        })
}

fn hostile_uri() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/",
        "/",
        "/",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "%25",
        "%252e",
        "%00",
        "%0a",
        "%7f",
        "%C2%85",
        "%EF%BC%8E",
        "%E2%88%95",
        "%c3",
        "%",
        "%4",
        "%zz",
        "\\",
        ";",
        "?",
        "#",
        "&",
        "=",
        "+",
        "a",
        "v2",
        "library",
        "manifests",
        "blobs",
        "uploads",
        "mount=",
        "from=",
        " ",
        "\u{0}",
        "é",
        "%3F",
        "%23",
    ]);
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

fn assert_canonical(uri: &str, format: &str) -> Result<(), TestCaseError> {
    let Ok(target) = canonicalize(uri, format) else {
        return Ok(());
    };
    let path = &target.path;
    prop_assert!(path.starts_with('/'), "{uri:?} -> {path:?}");
    prop_assert!(path.is_ascii(), "{uri:?} -> {path:?}");
    prop_assert!(!path.contains("//"), "{uri:?} -> {path:?}");
    prop_assert!(!path.contains('\\'), "{uri:?} -> {path:?}");
    prop_assert!(!path.contains('%'), "{uri:?} -> {path:?}");
    prop_assert!(!path.contains(';'), "{uri:?} -> {path:?}");
    prop_assert!(!path.chars().any(char::is_control), "{uri:?} -> {path:?}");
    prop_assert!(!path.split('/').any(|s| s == "." || s == ".."), "{uri:?} -> {path:?}");
    prop_assert!(path.len() <= MAX_PATH_BYTES);
    // Decoding exactly once, as the percent-encoding crate does it.
    let raw_path = uri.split('?').next().unwrap_or_default();
    let once = percent_encoding::percent_decode_str(raw_path).decode_utf8();
    prop_assert_eq!(once.as_deref().ok(), Some(path.as_str()));
    let lower = raw_path.to_ascii_lowercase();
    prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{:?}", uri);
    prop_assert_eq!(target.docker.is_some(), format == "docker");
    if let Some(repository) = target.docker.as_ref().and_then(DockerRoute::repository) {
        prop_assert!(is_valid_repository_name(repository));
        let route_prefix = format!("/v2/{repository}/");
        prop_assert!(path.starts_with(&route_prefix), "{} not under {}", path, route_prefix);
    }
    if let Ok(Some(mount)) = target.mount() {
        prop_assert!(is_valid_digest(&mount.digest) && is_valid_repository_name(&mount.from));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_and_accepts_only_canonical_paths(uri in any::<String>()) {
        assert_canonical(&uri, "docker")?;
        assert_canonical(&uri, "raw")?;
        let rooted = format!("/{uri}");
        assert_canonical(&rooted, "docker")?;
        assert_canonical(&rooted, "maven")?;
    }

    #[test]
    fn hostile_pieces_never_produce_a_non_canonical_path(tail in hostile_uri()) {
        let uri = format!("/{tail}");
        assert_canonical(&uri, "docker")?;
        assert_canonical(&uri, "npm")?;
    }

    #[test]
    fn routes_agree_with_distribution_router_regexes(path in docker_like_path()) {
        // The oracle only models routing; the generic checks are tested elsewhere.
        let ours = canonicalize(&path, "docker").ok().and_then(|t| t.docker);
        match canonicalize(&path, "raw") {
            // The docker checks only add to the generic ones.
            Err(_) => prop_assert_eq!(ours, None, "{}", path),
            Ok(generic) => {
                let expected = oracle_route(&generic.path);
                prop_assert_eq!(ours, expected, "{} decoded {}", path, generic.path);
            }
        }
    }

    #[test]
    fn name_validator_agrees_with_grammar(name in "[a-z0-9._/A-]{0,12}") {
        prop_assert_eq!(is_valid_repository_name(&name), oracle_name(&name), "{}", name);
    }

    #[test]
    fn tag_validator_agrees_with_grammar(tag in "[a-zA-Z0-9._:/-]{0,10}|[a-z_]{120,135}") {
        prop_assert_eq!(is_valid_tag(&tag), oracle_tag(&tag), "{}", tag);
    }

    #[test]
    fn digest_validator_agrees_with_grammar(
        digest in "(sha256|sha512|[a-z0-9.+_A-]{0,6}):?:[a-fA-Z0-9=_:-]{0,6}|sha256:[a-f0-9]{63,65}|sha512:[a-f0-9]{127,129}"
    ) {
        prop_assert_eq!(is_valid_digest(&digest), oracle_digest(&digest), "{}", digest);
    }
}
