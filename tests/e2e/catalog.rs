//! End-to-end: `GET /v2/_catalog` through nginx (the repository's nginx/csel-auth.conf sends it
//! to csel-auth) with images in the CNCF registry, on nginx 1.22 and 1.26, in basic and in token
//! mode. Each caller sees exactly the repositories it may read; paging follows the `Link`
//! headers over the whole filtered list once; real clients (curl, python-dxf's `list_repos`)
//! get the filtered list; a rule change shows in the next answer.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};

use crate::kit::files::example;
use crate::kit::http::Response;
use crate::kit::nginx::{nginx_binaries, NginxBinary};
use crate::kit::password;
use crate::kit::process::{require_program, run_command};
use crate::kit::stack::{basic_auth, step, Mode, Stack, TOKEN_SERVICE};

/// Pushed straight into the registry; examples/registry.rules decides who reads which.
const REPOSITORIES: [&str; 6] = [
    "alice/private",
    "carol/y",
    "coolteam/app",
    "library/a",
    "library/b",
    "shared/docs",
];

/// What each caller may read under examples/registry.rules (admin-parente's grant names the
/// catalog: everything).
fn expected(user: Option<&str>) -> Vec<&'static str> {
    match user {
        None => vec!["library/a", "library/b"],
        Some("alice") => vec!["alice/private", "coolteam/app", "library/a", "library/b", "shared/docs"],
        Some("carol") => vec!["carol/y", "library/a", "library/b", "shared/docs"],
        Some("admin-parente") => REPOSITORIES.to_vec(),
        Some(other) => panic!("no expectation for {other}"),
    }
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn each_caller_sees_its_own_catalog_basic_mode() -> Result<()> {
    on_every_nginx(Mode::Basic)
}

#[test]
fn each_caller_sees_its_own_catalog_token_mode() -> Result<()> {
    on_every_nginx(Mode::Token)
}

fn on_every_nginx(mode: Mode) -> Result<()> {
    for nginx in nginx_binaries()? {
        eprintln!(
            "== catalog, {mode} mode, nginx {} ({})",
            nginx.version,
            nginx.path.display()
        );
        scenario(&nginx, mode).with_context(|| format!("catalog, {mode} mode, on nginx {}", nginx.version))?;
    }
    Ok(())
}

/// The repositories of a 200 answer in the distribution format, with the API version header.
fn listed(response: &Response, what: &str) -> Result<Vec<String>> {
    ensure!(
        response.status == 200,
        "{what}: {} {}",
        response.status,
        response.text()
    );
    ensure!(
        response.header("docker-distribution-api-version") == Some("registry/2.0"),
        "{what}: no Docker-Distribution-Api-Version: {response:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&response.body).with_context(|| response.text())?;
    serde_json::from_value(json["repositories"].clone()).with_context(|| format!("{what}: {json}"))
}

/// `<TARGET>; rel="next"` → TARGET.
fn next_target(response: &Response) -> Result<Option<String>> {
    response
        .header("link")
        .map(|link| {
            link.strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(target, _)| target.to_string())
                .ok_or_else(|| anyhow!("a Link header not of the form <…>; rel=\"next\": {link}"))
        })
        .transpose()
}

fn scenario(nginx: &NginxBinary, mode: Mode) -> Result<()> {
    let stack = step(
        &format!("[{mode}, {nginx}] start a stack with examples/registry.rules"),
        || Stack::start_on(nginx, mode, &example("registry.rules")?),
    )?;
    step(
        &format!("[{mode}, {nginx}] seed {} repositories", REPOSITORIES.len()),
        || {
            for name in REPOSITORIES {
                stack.seed_image(name, "1", &format!("content of {name}\n"))?;
            }
            Ok(())
        },
    )?;

    if mode == Mode::Token {
        step(
            &format!("[{mode}, {nginx}] without a token: the Bearer challenge for the catalog"),
            || {
                let response = stack.request(None, "GET", "/v2/_catalog", &[], b"")?;
                ensure!(response.status == 401, "{} {}", response.status, response.text());
                let challenge = response.header("www-authenticate").unwrap_or_default();
                ensure!(
                    challenge.starts_with("Bearer realm=")
                        && challenge.contains(&format!("service=\"{TOKEN_SERVICE}\""))
                        && challenge.contains("scope=\"registry:catalog:*\""),
                    "challenge {challenge:?}"
                );
                ensure!(!response.text().contains("repositories"), "{}", response.text());
                Ok(())
            },
        )?;
    }

    // The Authorization each caller sends: Basic, or a token fetched for the catalog's scope.
    let authorization = |user: Option<&str>| -> Result<Option<String>> {
        match mode {
            Mode::Basic => Ok(user.map(basic_auth)),
            Mode::Token => {
                let credentials = user.map(basic_auth);
                let headers: Vec<(&str, &str)> = credentials.iter().map(|c| ("Authorization", c.as_str())).collect();
                let response = stack.nginx.request(
                    "GET",
                    &format!("/token?service={TOKEN_SERVICE}&scope=registry:catalog:*"),
                    &headers,
                    b"",
                )?;
                ensure!(
                    response.status == 200,
                    "token for {user:?}: {} {}",
                    response.status,
                    response.text()
                );
                let json: serde_json::Value = serde_json::from_slice(&response.body)?;
                let token = json["token"].as_str().ok_or_else(|| anyhow!("no token: {json}"))?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    };

    step(
        &format!("[{mode}, {nginx}] each caller sees exactly what it may read"),
        || {
            for user in [None, Some("alice"), Some("carol"), Some("admin-parente")] {
                let auth = authorization(user)?;
                let response = stack.request(auth.as_deref(), "GET", "/v2/_catalog", &[], b"")?;
                let names = listed(&response, &format!("{user:?}"))?;
                ensure!(
                    names == expected(user),
                    "{user:?} sees {names:?}, expected {:?}",
                    expected(user)
                );
            }
            // The security point: carol never sees alice's private repository.
            let carol = authorization(Some("carol"))?;
            let response = stack.request(carol.as_deref(), "GET", "/v2/_catalog?n=1000", &[], b"")?;
            ensure!(
                !response.text().contains("alice/private") && !response.text().contains("coolteam/app"),
                "carol's catalog shows another's repository: {}",
                response.text()
            );
            // Every answer is a decision line of csel-auth's.
            let log = stack.decision_log();
            ensure!(
                log.lines().any(|l| l.contains("csel_auth::decision")
                    && l.contains("user=\"carol\"")
                    && l.contains("/v2/_catalog")
                    && l.contains("repositories=4")),
                "no decision line for carol's catalog:\n{log}"
            );
            Ok(())
        },
    )?;

    step(
        &format!("[{mode}, {nginx}] n=2 pages walk the filtered list once"),
        || {
            let auth = authorization(Some("alice"))?;
            let whole = listed(
                &stack.request(auth.as_deref(), "GET", "/v2/_catalog", &[], b"")?,
                "whole",
            )?;
            let mut walked: Vec<String> = Vec::new();
            let mut target = Some("/v2/_catalog?n=2".to_string());
            let mut pages = 0;
            while let Some(path) = target {
                pages += 1;
                ensure!(pages <= whole.len() + 1, "the links do not end: {walked:?}");
                let response = stack.request(auth.as_deref(), "GET", &path, &[], b"")?;
                let page = listed(&response, &path)?;
                ensure!(page.len() <= 2, "{path}: {page:?}");
                walked.extend(page);
                target = next_target(&response)?;
            }
            let mut unique = walked.clone();
            unique.dedup();
            ensure!(unique.len() == walked.len(), "duplicates in {walked:?}");
            ensure!(walked == whole, "walked {walked:?}, the whole list is {whole:?}");
            ensure!(
                pages == whole.len().div_ceil(2),
                "{pages} pages for {} names",
                whole.len()
            );
            // A bad n is the distribution's error, through nginx too.
            let bad = stack.request(auth.as_deref(), "GET", "/v2/_catalog?n=abc", &[], b"")?;
            ensure!(
                bad.status == 400 && bad.text().contains("PAGINATION_NUMBER_INVALID"),
                "{} {}",
                bad.status,
                bad.text()
            );
            Ok(())
        },
    )?;

    step(&format!("[{mode}, {nginx}] real clients get the filtered list"), || {
        let host = stack.host();
        match mode {
            Mode::Basic => {
                // curl sends the credentials at once; python-dxf reads anonymously until challenged.
                let curl = require_program("curl")?;
                let mut command = Command::new(curl);
                command.args(["-sS", "--fail", "-u", &format!("carol:{}", password("carol"))]);
                command.arg(format!("http://{host}/v2/_catalog"));
                let out = run_command(command, None, CLIENT_TIMEOUT)?.ok()?;
                let json: serde_json::Value = serde_json::from_str(&out.stdout).with_context(|| out.to_string())?;
                ensure!(
                    json["repositories"] == serde_json::json!(expected(Some("carol"))),
                    "curl as carol: {json}"
                );
                ensure!(python_dxf_list(&host, None)? == expected(None), "python-dxf anonymous");
            }
            Mode::Token => {
                for user in [None, Some("alice"), Some("carol")] {
                    let names = python_dxf_list(&host, user)?;
                    ensure!(names == expected(user), "python-dxf as {user:?}: {names:?}");
                }
            }
        }
        Ok(())
    })?;

    step(
        &format!("[{mode}, {nginx}] a rule change shows in the next answer"),
        || {
            let rules = example("registry.rules")?.replace(
                "grant read on (format == \"docker\" and path =^ \"/v2/shared/\") to authenticated",
                "grant read on (format == \"docker\" and path =^ \"/v2/coolteam/\") to carol",
            );
            ensure!(
                rules != example("registry.rules")?,
                "examples/registry.rules changed shape"
            );
            stack.set_rules(&rules)?;
            let auth = authorization(Some("carol"))?;
            let names = listed(
                &stack.request(auth.as_deref(), "GET", "/v2/_catalog", &[], b"")?,
                "carol",
            )?;
            ensure!(
                names == ["carol/y", "coolteam/app", "library/a", "library/b"],
                "carol after the change: {names:?}"
            );
            Ok(())
        },
    )?;
    Ok(())
}

/// python-dxf's `list_repos` (2 names a page, following the links) as `user`, or anonymous.
/// Its `authenticate` refuses plain HTTP, so the script answers a Bearer challenge itself as
/// docker does: a token from the realm for the challenged scope, with the user's password.
fn python_dxf_list(host: &str, user: Option<&str>) -> Result<Vec<String>> {
    const SCRIPT: &str = r#"
import base64, json, sys
import requests, www_authenticate
from dxf import DXFBase

host, user, password = sys.argv[1:4]
basic = {}
if user:
    basic = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

def auth(dxf, response):
    info = www_authenticate.parse(response.headers["www-authenticate"])["bearer"]
    params = {"service": info["service"], "scope": info["scope"]}
    answer = requests.get(info["realm"], params=params, headers=basic, timeout=30)
    answer.raise_for_status()
    dxf.token = answer.json()["token"]

registry = DXFBase(host, auth=auth, insecure=True, timeout=30)
print(json.dumps(registry.list_repos(batch_size=2)))
"#;
    let python = require_program("python3")?;
    let mut command = Command::new(python);
    command
        .arg("-c")
        .arg(SCRIPT)
        .arg(host)
        .arg(user.unwrap_or(""))
        .arg(user.map(password).unwrap_or_default());
    let out = run_command(command, None, CLIENT_TIMEOUT)?;
    ensure!(
        out.success(),
        "python-dxf (pip install python-dxf; scripts/install-test-deps installs it):\n{out}"
    );
    serde_json::from_str(out.stdout.trim()).with_context(|| out.to_string())
}
