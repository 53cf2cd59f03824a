//! End-to-end: a robot that exists only in the rules (`ci-bot`, no htpasswd line) logs in with
//! an access key scoped to pushes on its own repository, and pushes there with docker, skopeo
//! and podman through nginx and the registry, in basic and token mode. The rules let it push
//! elsewhere too: only the key's scope refuses that, at once.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use super::docker::DENIED;
use super::skopeo_podman::{push_refused as tools_push_refused, skopeo_quoted, Expected, Tools};
use crate::kit::docker::Dockerd;
use crate::kit::stack::{failed_with_stderr, refused_at_once, step, succeeded_with, Mode, Stack};

const RULES: &str = r#"
selector robots    = format == "docker" and path =^ "/v2/robots/"
selector elsewhere = format == "docker" and path =^ "/v2/elsewhere/"
group builders = ci-bot
grant push on robots to @builders
grant push on elsewhere to @builders
"#;

/// `csel-auth access-key create` for ci-bot, limited to pushes on robots/*; its secret.
fn create_robot_key(keys: &Path) -> Result<String> {
    let out = Command::new(crate::kit::service::binary())
        .args(["access-key", "create", "--file"])
        .arg(keys)
        .args(["--user", "ci-bot", "--id", "ci-bot-push", "--actions", "push", "--on"])
        .arg(r#"path =^ "/v2/robots/""#)
        .output()
        .context("running csel-auth access-key create")?;
    ensure!(out.status.success(), "access-key create: {out:?}");
    let secret = String::from_utf8(out.stdout)?.trim().to_string();
    ensure!(secret.starts_with("csk_"), "not a secret: {secret:?}");
    Ok(secret)
}

#[test]
fn a_robot_pushes_with_its_access_key_and_only_where_the_key_allows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("access.keys");
    let secret = create_robot_key(&keys)?;
    let token = step("start a token-mode stack with ci-bot's key", || {
        Stack::start_with_access_keys(Mode::Token, RULES, &keys)
    })?;
    let basic = step("start a basic-mode stack with ci-bot's key", || {
        Stack::start_with_access_keys(Mode::Basic, RULES, &keys)
    })?;
    let dockerd = step("start dockerd", || Dockerd::start(token.nginx.addr()))?;
    for stack in [&token, &basic] {
        with_docker(&dockerd, stack, &secret)?;
        with_skopeo_and_podman(stack, &secret)?;
    }
    Ok(())
}

fn with_docker(dockerd: &Dockerd, stack: &Stack, secret: &str) -> Result<()> {
    let mode = stack.mode;
    let client = dockerd.new_client()?;
    step(&format!("[{mode}] docker login -u ci-bot -p <key>"), || {
        succeeded_with(client.login(stack.nginx.addr(), "ci-bot", secret)?, "Login Succeeded")
    })?;
    let mine = stack.image("robots/app:docker");
    step(&format!("[{mode}] ci-bot docker pushes to robots/app"), || {
        dockerd.import_tiny_image(&mine, &format!("ci-bot's image ({mode})\n"))?;
        succeeded_with(client.run(&["push", &mine])?, "docker: digest: sha256:")?;
        ensure!(
            stack.registry_has_manifest("robots/app", "docker")?,
            "robots/app:docker is not in the registry"
        );
        Ok(())
    })?;
    let elsewhere = stack.image("elsewhere/app:docker");
    step(
        &format!("[{mode}] ci-bot's key cannot docker push to elsewhere/app"),
        || {
            client.run(&["tag", &mine, &elsewhere])?.ok()?;
            failed_with_stderr(refused_at_once(client.run(&["push", &elsewhere])?)?, DENIED)?;
            ensure!(
                !stack.registry_has_manifest("elsewhere/app", "docker")?,
                "the refused push left a manifest"
            );
            crate::kit::stack::expect_log_line(
                "csel-auth logged the key and the scope",
                &stack.decision_log(),
                &[
                    "user=\"ci-bot\"",
                    "reason=outside the scope of access key ci-bot-push",
                    "key=\"ci-bot-push\"",
                ],
            )
        },
    )?;
    Ok(())
}

fn with_skopeo_and_podman(stack: &Stack, secret: &str) -> Result<()> {
    let mode = stack.mode;
    let expect = Expected { stack };
    let tools = step(&format!("[{mode}] skopeo login -u ci-bot with the key"), || {
        Tools::login_with(stack, "ci-bot", secret)
    })?;
    step(&format!("[{mode}] ci-bot skopeo pushes to robots/app"), || {
        crate::kit::stack::succeeded(tools.skopeo_push("robots/app:skopeo", "ci-bot skopeo\n")?)
    })?;
    step(&format!("[{mode}] ci-bot podman pushes to robots/app"), || {
        crate::kit::stack::succeeded(tools.podman_push("robots/app:podman", "ci-bot podman\n")?)
    })?;
    step(
        &format!("[{mode}] ci-bot's key cannot skopeo push to elsewhere/app"),
        || {
            tools_push_refused(
                tools.skopeo_push("elsewhere/app:skopeo", "ci-bot elsewhere\n")?,
                &skopeo_quoted(&expect.blob_check_refused("elsewhere/app")),
            )
        },
    )?;
    step(
        &format!("[{mode}] ci-bot's key cannot podman push to elsewhere/app"),
        || {
            tools_push_refused(
                tools.podman_push("elsewhere/app:podman", "ci-bot elsewhere podman\n")?,
                &expect.blob_check_refused("elsewhere/app"),
            )
        },
    )?;
    ensure!(!stack.registry_has_manifest("elsewhere/app", "skopeo")?);
    ensure!(!stack.registry_has_manifest("elsewhere/app", "podman")?);
    Ok(())
}
