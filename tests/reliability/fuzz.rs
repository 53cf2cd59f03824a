//! The fuzz targets' invariants (`fuzz/checks.rs`) driven by proptest, on stable and inside
//! `cargo test`: the rules parser, the path canonicalizer, the `Authorization` parser and the
//! decisions under the example rules. Inputs mix arbitrary text with pieces that matter to each
//! parser, so that deep and odd corners are reached in a few thousand cases. The coverage-guided
//! libFuzzer runs of the same checks are `fuzz/run.sh` (see the README).

use std::sync::OnceLock;

use proptest::prelude::*;

use csel_auth::rules::Rules;

use crate::kit::{expected_status, scale};

#[path = "../../fuzz/checks.rs"]
mod checks;

fn cases() -> u32 {
    scale(6_000, 200_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // A failure names its input; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn registry_rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        Rules::parse("registry.rules", checks::REGISTRY_RULES).unwrap_or_else(|e| panic!("example rules: {e}"))
    })
}

/// Words and marks of the rules language, and things that are almost them.
fn rules_token() -> impl Strategy<Value = String> {
    let words: Vec<&str> = vec![
        "selector",
        "group",
        "grant",
        "on",
        "to",
        "=",
        ",",
        "(",
        ")",
        "*",
        "@",
        "@team",
        "read",
        "add",
        "edit",
        "delete",
        "pull",
        "push",
        "anonymous",
        "authenticated",
        "format",
        "path",
        "method",
        "user",
        "and",
        "or",
        "not",
        "!",
        "&&",
        "||",
        "==",
        "!=",
        "=~",
        "=^",
        "eq",
        "ne",
        "\"docker\"",
        "\"/v2/library/\"",
        "\"/v2/${user}/\"",
        "'x'",
        "\"(a|b)*\"",
        "\".*\"",
        "\"\\\\\"",
        "\"\\u0041\"",
        "\"\\\"\"",
        "\"(?=x)\"",
        "\"\\\\1\"",
        "\"[\"",
        "\"a{1000}{1000}\"",
        "lib",
        "team",
        "alice",
        "\"admin x\"",
        "#",
        "# comment\n",
        "\n",
        "\r\n",
        "\t",
        "\"",
        "'",
        "\\",
        "${user}",
        "selectorx",
        "grantee",
        "ö",
        "\u{feff}",
        "\u{0}",
        "((((((((((",
        "))))))))))",
        "not not not not",
        "!!!!!!!!",
    ];
    prop_oneof![
        8 => prop::sample::select(words).prop_map(str::to_string),
        1 => "[a-z_$@.-]{1,8}",
        1 => any::<String>(),
    ]
}

/// Rules-like text: tokens joined by spaces, newlines or nothing.
fn rules_like() -> impl Strategy<Value = String> {
    prop::collection::vec((rules_token(), prop::sample::select(vec![" ", " ", "\n", ""])), 0..40)
        .prop_map(|tokens| tokens.into_iter().map(|(t, sep)| format!("{t}{sep}")).collect())
}

/// Pieces of request targets that matter to the canonicalizer.
fn uri_piece() -> impl Strategy<Value = String> {
    let pieces: Vec<&str> = vec![
        "/",
        "/",
        "/",
        "/v2/",
        "v2",
        "library",
        "alpine",
        "alice",
        "coolteam",
        "carol",
        "shared",
        "app",
        "manifests",
        "blobs",
        "uploads",
        "tags",
        "list",
        "referrers",
        "_catalog",
        "latest",
        "1.0",
        ".",
        "..",
        "...",
        "%2e",
        "%2E",
        "%2e%2e",
        "%252e",
        "%2f",
        "%2F",
        "%252f",
        "%5c",
        "%5C",
        "\\",
        ";",
        ";x=y",
        "//",
        "%00",
        "%0a",
        "%0d",
        "%7f",
        "%20",
        "+",
        " ",
        "%",
        "%4",
        "%zz",
        "%c0%ae",
        "%ef%bc%8e",
        "%e2%80%a5",
        "%ef%bc%8f",
        "%e2%88%95",
        "ａ",
        "．",
        "é",
        "\u{0}",
        "?",
        "#",
        "&",
        "=",
        "%3f",
        "%23",
        "?mount=",
        "&from=",
        "&mount=",
        "&digest=",
        "sha256:",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "A",
        "V2",
        "LIBRARY",
        "-",
        "_",
        "__",
        "a-b",
    ];
    prop_oneof![
        10 => prop::sample::select(pieces).prop_map(str::to_string),
        1 => "[a-z0-9._-]{1,12}",
        1 => any::<String>(),
    ]
}

fn hostile_uri() -> impl Strategy<Value = String> {
    prop::collection::vec(uri_piece(), 0..24).prop_map(|pieces| pieces.concat())
}

/// `Authorization` values: pieces of the two schemes, encoded credentials with odd content, and
/// arbitrary bytes.
fn authorization_value() -> impl Strategy<Value = Vec<u8>> {
    use base64::Engine;
    let scheme = prop::sample::select(vec![
        "Basic ",
        "basic ",
        "BASIC  ",
        "Basic",
        "Bearer ",
        "bearer ",
        "Digest ",
        "Negotiate ",
        " Basic ",
        "Basic\t",
        "",
        "Basic Og==",
        "Basic Og",
    ]);
    let credentials = prop_oneof![
        (".{0,12}", ".{0,12}").prop_map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))),
        ".{0,12}".prop_map(|u| base64::engine::general_purpose::STANDARD_NO_PAD.encode(u)),
        "[A-Za-z0-9+/=._~-]{0,40}",
        any::<String>(),
    ];
    prop_oneof![
        4 => (scheme, credentials, "[ \t=]{0,3}").prop_map(|(s, c, tail)| format!("{s}{c}{tail}").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (0usize..3).prop_map(|extra| {
            let mut long = b"Basic ".to_vec();
            long.resize(csel_auth::identity::MAX_AUTHORIZATION_LEN + extra, b'Q');
            long
        }),
    ]
}

fn verdict(result: Result<(), String>) -> Result<(), TestCaseError> {
    result.map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rules_parser_on_rules_like_text(text in rules_like()) {
        verdict(checks::rules_text(&text))?;
    }

    #[test]
    fn rules_parser_on_any_text(text in any::<String>()) {
        verdict(checks::rules_text(&text))?;
    }

    #[test]
    fn canonicalizer_on_hostile_targets(uri in hostile_uri()) {
        verdict(checks::canonical(&uri))?;
        verdict(checks::canonical(&format!("/{uri}")))?;
    }

    #[test]
    fn canonicalizer_on_any_text(uri in any::<String>()) {
        verdict(checks::canonical(&uri))?;
        verdict(checks::canonical(&format!("/v2/{uri}")))?;
    }

    #[test]
    fn authorization_parser(value in authorization_value()) {
        verdict(checks::authorization(&value))?;
    }

    #[test]
    fn decisions_never_exceed_the_example_rules(
        who in any::<u8>(),
        how in any::<u8>(),
        form in any::<u8>(),
        uri in hostile_uri(),
    ) {
        let mut data = vec![who, how, form];
        data.extend_from_slice(format!("/v2/{uri}").as_bytes());
        verdict(checks::decision_from_bytes(registry_rules(), &data))?;
    }
}

/// Every prefix of an example rules file is what a half-written file looks like: it loads or
/// is refused with a position. A loaded prefix lost grants, list items or the end of a name; a
/// selector cut short is used by no grant of the prefix, because the examples define selectors
/// before granting them. So no prefix lets anyone do what the whole file would not; this holds
/// for files written in that order only, which is why the reload never reads a file while its
/// writer has it open (`reload::a_writer_pausing_for_seconds_never_puts_half_a_rules_file_in_force`).
#[test]
fn every_prefix_of_the_example_rules_is_safe() {
    for (name, text) in [
        ("registry", include_str!("../../examples/registry.rules")),
        ("readonly-admins", include_str!("../../examples/readonly-admins.rules")),
        ("personal", include_str!("../../examples/personal.rules")),
    ] {
        let whole = Rules::parse(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let probes = [
            (None, "GET", "/v2/library/alpine/manifests/1"),
            (Some("alice"), "PUT", "/v2/coolteam/app/manifests/1"),
            (Some("alice"), "PUT", "/v2/alice/app/manifests/1"),
            (Some("carol"), "GET", "/v2/alice/app/manifests/1"),
            (Some("admin-parente"), "DELETE", "/v2/x/manifests/1"),
            (Some("admin-ops"), "PUT", "/v2/x/manifests/1"),
            (Some("bob"), "GET", "/v2/_catalog"),
            (Some("bob"), "GET", "/v2/bob/public/x/manifests/1"),
            (None, "GET", "/v2/bob/public/x/manifests/1"),
        ];
        let allowed = |rules: &Rules, (user, method, uri): (Option<&str>, &str, &str)| {
            expected_status(rules, user, method, uri, None) == 200
        };
        let mut loaded = 0;
        for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let prefix = &text[..cut];
            if let Err(problem) = checks::rules_text(prefix) {
                panic!("{name}, first {cut} bytes: {problem}");
            }
            let Ok(rules) = Rules::parse(name, prefix) else {
                continue;
            };
            loaded += 1;
            for probe in probes {
                assert!(
                    !allowed(&rules, probe) || allowed(&whole, probe),
                    "{name}: the first {cut} bytes allow {probe:?}, the whole file does not"
                );
            }
        }
        assert!(loaded > 10, "{name}: only {loaded} prefixes load");
    }
}
