//! End-to-end with raw HTTP through nginx: hostile paths
//! (tests/data/attacks.txt: encoded and dot segments, double slashes,
//! backslashes, case, methods, the catalog, ambiguous mounts) never return
//! private manifest or blob bytes, and a cross-repository mount whose form
//! body names another source than its query is refused, in basic and in
//! token mode, through Debian 12's nginx 1.22 and Debian 13's nginx 1.26
//! (which joins repeated headers in `$content_type`).

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};

use crate::kit::cases::attacks;
use crate::kit::files::example;
use crate::kit::nginx::{nginx_binaries, NginxBinary};
use crate::kit::stack::{expect_log_line, step, Mode, SeededImage, Stack};

/// The digest attacks.txt uses as a placeholder (sha256 of nothing).
const PLACEHOLDER_DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Private content seeded for the attacks, and the strings that would show
/// it leaked.
struct Private {
    team: SeededImage,
    alice: SeededImage,
    secret: SeededImage,
}

impl Private {
    fn seed(stack: &Stack) -> Result<Self> {
        stack.seed_image("library/alpine", "1", "public library/alpine\n")?;
        Ok(Self {
            team: stack.seed_image("coolteam/app", "1.0", "PRIVATE coolteam/app layer\n")?,
            alice: stack.seed_image("alice/tools", "1", "PRIVATE alice/tools layer\n")?,
            secret: stack.seed_image("alice/secret", "1", "PRIVATE alice/secret layer\n")?,
        })
    }

    /// Strings no error page contains: the layer contents, the config
    /// digests (only in manifests), the keys of tag lists and the catalog.
    fn needles(&self) -> Vec<String> {
        let mut needles = vec!["\"tags\"".to_string(), "\"repositories\"".to_string()];
        for image in [&self.team, &self.alice, &self.secret] {
            needles.push(image.content.trim_end().to_string());
            needles.push(image.config_digest.trim_start_matches("sha256:").to_string());
        }
        needles
    }

    /// The first needle `body` contains.
    fn leaked<'a>(&self, needles: &'a [String], body: &[u8]) -> Option<&'a str> {
        let text = String::from_utf8_lossy(body);
        needles.iter().find(|n| text.contains(n.as_str())).map(String::as_str)
    }
}

/// Runs `scenario` once on every nginx of [`nginx_binaries`], saying which.
fn on_every_nginx(what: &str, mode: Mode, scenario: impl Fn(&NginxBinary, Mode) -> Result<()>) -> Result<()> {
    for nginx in nginx_binaries()? {
        eprintln!(
            "== {what}, {mode} mode, nginx -v: {} ({})",
            nginx.version,
            nginx.path.display()
        );
        scenario(&nginx, mode).with_context(|| format!("{what}, {mode} mode, on {}", nginx.version))?;
    }
    Ok(())
}

#[test]
fn path_tricks_basic_mode() -> Result<()> {
    on_every_nginx("path tricks", Mode::Basic, path_tricks)
}

#[test]
fn path_tricks_token_mode() -> Result<()> {
    on_every_nginx("path tricks", Mode::Token, path_tricks)
}

fn path_tricks(nginx: &NginxBinary, mode: Mode) -> Result<()> {
    let stack = step(
        &format!("[{mode}, {nginx}] start a stack with examples/registry.rules"),
        || Stack::start_on(nginx, mode, &example("registry.rules")?),
    )?;
    let private = Private::seed(&stack)?;
    let needles = private.needles();
    let mut authorizations: HashMap<String, Option<String>> = HashMap::new();
    for user in ["anonymous", "alice", "bob", "carol"] {
        let who = (user != "anonymous").then_some(user);
        // Token mode: the anonymous attacker holds a (valid) anonymous token.
        authorizations.insert(user.to_string(), stack.authorization(who)?);
    }

    step(
        &format!("[{mode}, {nginx}] the owners read the private content (the needles are seen)"),
        || {
            let team = authorizations["alice"].as_deref();
            let reads = [
                (team, format!("/v2/coolteam/app/manifests/{}", private.team.tag)),
                (team, format!("/v2/coolteam/app/blobs/{}", private.team.layer_digest)),
                (team, "/v2/coolteam/app/tags/list".to_string()),
                (team, format!("/v2/alice/tools/manifests/{}", private.alice.tag)),
                (team, format!("/v2/alice/secret/blobs/{}", private.secret.layer_digest)),
            ];
            for (authorization, path) in reads {
                let response = stack.request(
                    authorization,
                    "GET",
                    &path,
                    &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                    b"",
                )?;
                ensure!(response.status == 200, "GET {path} as alice: {response:?}");
                ensure!(
                    private.leaked(&needles, &response.body).is_some(),
                    "GET {path} as alice returned none of {needles:?}: {}",
                    response.text()
                );
            }
            Ok(())
        },
    )?;

    step(
        &format!("[{mode}, {nginx}] every request of tests/data/attacks.txt is refused without private bytes"),
        || {
            let attacks = attacks();
            let mut failures = Vec::new();
            let mut statuses: HashMap<u16, usize> = HashMap::new();
            for attack in &attacks {
                // Point the placeholder digest at real private blobs: alice's
                // secret layer for mounts, coolteam's layer for reads.
                let digest = if attack.uri.contains("/blobs/uploads/") {
                    &private.secret.layer_digest
                } else {
                    &private.team.layer_digest
                };
                let uri = attack.uri.replace(PLACEHOLDER_DIGEST, digest);
                let user = attack.user.as_deref().unwrap_or("anonymous");
                let authorization = authorizations
                    .get(user)
                    .with_context(|| format!("{}: unknown user {user}", attack.origin))?;
                let mut headers = Vec::new();
                let mut body: &[u8] = b"";
                if let Some(content_type) = &attack.content_type {
                    headers.push(("Content-Type", content_type.as_str()));
                    // The body the registry would read `from` out of.
                    body = b"from=alice%2Fsecret";
                }
                let response = stack.request(authorization.as_deref(), &attack.method, &uri, &headers, body)?;
                *statuses.entry(response.status).or_default() += 1;
                // The catalog itself is answered by csel-auth, filtered (tests/e2e/catalog.rs):
                // the list must be exactly what the user may read, nothing private of others.
                if attack.method == "GET" && uri.split('?').next() == Some("/v2/_catalog") {
                    let expected: &[&str] = match user {
                        "alice" => &["alice/secret", "alice/tools", "coolteam/app", "library/alpine"],
                        _ => &["library/alpine"],
                    };
                    let listed = serde_json::from_slice::<serde_json::Value>(&response.body)
                        .ok()
                        .and_then(|json| serde_json::from_value::<Vec<String>>(json["repositories"].clone()).ok());
                    if response.status != 200
                        || listed.as_deref() != Some(&expected.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..])
                    {
                        failures.push(format!(
                            "{}: {user} GET {uri} -> {}: expected exactly {expected:?}, got {}",
                            attack.origin,
                            response.status,
                            response.text()
                        ));
                    }
                    continue;
                }
                let leaked = private.leaked(&needles, &response.body);
                if (200..300).contains(&response.status) || leaked.is_some() {
                    failures.push(format!(
                        "{}: {user} {} {uri} -> {} (leaked {leaked:?}) {}",
                        attack.origin,
                        attack.method,
                        response.status,
                        response.text()
                    ));
                }
            }
            let mut summary: Vec<_> = statuses.into_iter().collect();
            summary.sort();
            eprintln!("[{mode}, {nginx}] {} attacks, statuses {summary:?}", attacks.len());
            ensure!(
                failures.is_empty(),
                "{} of {} attacks were let through:\n{}",
                failures.len(),
                attacks.len(),
                failures.join("\n")
            );
            // Nothing was mounted into coolteam/app from alice's secret.
            let mounted = stack
                .registry
                .get(&format!("/v2/coolteam/app/blobs/{}", private.secret.layer_digest))?;
            ensure!(
                mounted.status == 404,
                "alice's secret blob is in coolteam/app: {mounted:?}"
            );
            Ok(())
        },
    )?;

    step(
        &format!("[{mode}, {nginx}] forged X-Original-* headers from the client are ignored"),
        || {
            let authorization = authorizations["anonymous"].as_deref();
            let path = format!("/v2/coolteam/app/manifests/{}", private.team.tag);
            let response = stack.request(
                authorization,
                "GET",
                &path,
                &[
                    ("X-Original-URI", "/v2/library/alpine/manifests/1"),
                    ("X-Original-Method", "GET"),
                    ("X-Auth-User", "alice"),
                ],
                b"",
            )?;
            ensure!(
                response.status == 401 && private.leaked(&needles, &response.body).is_none(),
                "GET {path} with forged headers: {response:?}"
            );
            Ok(())
        },
    )?;
    Ok(())
}

#[test]
fn mount_from_a_form_body_basic_mode() -> Result<()> {
    on_every_nginx("mount from a form body", Mode::Basic, mount_from_a_form_body)
}

#[test]
fn mount_from_a_form_body_token_mode() -> Result<()> {
    on_every_nginx("mount from a form body", Mode::Token, mount_from_a_form_body)
}

/// distribution reads `from` with Go's FormValue: a form body wins over the
/// query, and the first duplicate wins. csel-auth sees only the query.
fn mount_from_a_form_body(nginx: &NginxBinary, mode: Mode) -> Result<()> {
    let stack = step(
        &format!("[{mode}, {nginx}] start a stack with examples/registry.rules"),
        || Stack::start_on(nginx, mode, &example("registry.rules")?),
    )?;
    let public = stack.seed_image("library/alpine", "1", "public library/alpine\n")?;
    // A blob only carol/x holds: alice (coolteam) may not read it.
    let secret = stack.registry.push_blob("carol/x", b"PRIVATE carol/x blob\n")?;
    let alice = stack.authorization(Some("alice"))?;
    let alice = alice.as_deref();
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let mount = format!("/v2/coolteam/app/blobs/uploads/?mount={secret}&from=library/alpine");
    // The whole mount in the body, nothing in the query.
    let form_mount = format!("mount={secret}&from=carol%2Fx");

    step(
        &format!("[{mode}, {nginx}] control: the registry itself mounts from the form body"),
        || {
            let direct = stack.registry.request(
                "POST",
                &format!("/v2/coolteam/control/blobs/uploads/?mount={secret}&from=library/alpine"),
                &[form],
                b"from=carol%2Fx",
            )?;
            ensure!(
                direct.status == 201,
                "the registry did not mount from the body: {direct:?}"
            );
            Ok(())
        },
    )?;
    step(
        &format!("[{mode}, {nginx}] control: a mount alice may make works through nginx"),
        || {
            let response = stack.request(
                alice,
                "POST",
                &format!(
                    "/v2/coolteam/app/blobs/uploads/?mount={}&from=library/alpine",
                    public.layer_digest
                ),
                &[],
                b"",
            )?;
            ensure!(response.status == 201, "mount from library/alpine: {response:?}");
            Ok(())
        },
    )?;
    step(
        &format!("[{mode}, {nginx}] the same query without a body does not mount carol's blob"),
        || {
            let response = stack.request(alice, "POST", &mount, &[], b"")?;
            ensure!(response.status == 202, "POST {mount} without a body: {response:?}");
            Ok(())
        },
    )?;
    // (what, URI, Content-Types, body)
    let variants: [(&str, String, &[&str], &[u8]); 6] = [
        (
            "a form body naming carol/x",
            mount.clone(),
            &[form.1],
            b"from=carol%2Fx",
        ),
        (
            // The registry reads the first Content-Type; nginx >= 1.23 gives
            // csel-auth both, joined with ", ".
            "a form body and a second Content-Type",
            "/v2/coolteam/app/blobs/uploads/".to_string(),
            &[form.1, "application/octet-stream"],
            form_mount.as_bytes(),
        ),
        (
            "a form body with a charset",
            mount.clone(),
            &["application/x-www-form-urlencoded; charset=utf-8"],
            b"from=carol%2Fx",
        ),
        (
            "a multipart form body",
            mount.clone(),
            &["multipart/form-data; boundary=x"],
            b"--x\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\ncarol/x\r\n--x--\r\n",
        ),
        (
            "a repeated from, carol/x first",
            format!("/v2/coolteam/app/blobs/uploads/?mount={secret}&from=carol/x&from=library/alpine"),
            &[],
            b"",
        ),
        (
            "a repeated from, carol/x second",
            format!("/v2/coolteam/app/blobs/uploads/?mount={secret}&from=library/alpine&from=carol/x"),
            &[],
            b"",
        ),
    ];
    for (what, uri, content_types, body) in variants {
        step(&format!("[{mode}, {nginx}] a mount with {what} is refused"), || {
            let headers: Vec<_> = content_types.iter().map(|c| ("Content-Type", *c)).collect();
            let response = stack.request(alice, "POST", &uri, &headers, body)?;
            ensure!(
                !(200..300).contains(&response.status),
                "POST {uri} ({what}) was let through: {response:?}"
            );
            Ok(())
        })?;
    }
    step(
        &format!("[{mode}, {nginx}] carol's blob never reached coolteam/app"),
        || {
            let blob = stack.registry.get(&format!("/v2/coolteam/app/blobs/{secret}"))?;
            ensure!(blob.status == 404, "carol's blob is in coolteam/app: {blob:?}");
            expect_log_line(
                "csel-auth logged the form-body refusal",
                &stack.decision_log(),
                &[
                    "status=403",
                    "user=\"alice\"",
                    "method=\"POST\"",
                    "/v2/coolteam/app/blobs/uploads/",
                ],
            )
        },
    )?;
    Ok(())
}
