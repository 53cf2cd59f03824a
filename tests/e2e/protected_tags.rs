//! End-to-end: release tags that never move (examples/protected-tags.rules). CI (alice) pushes
//! `releases/<tool>:v1` with docker, skopeo and podman; a second push of v1 with other content
//! is refused at once with a message that names the tag, and the registry still serves the
//! first digest; `latest` is pushed twice; an admin may move v1. In basic and token mode,
//! through both nginx versions (the message travels from csel-auth's answer header through
//! nginx's error page, which is nginx's doing).

use anyhow::{ensure, Context, Result};

use super::skopeo_podman::Tools;
use crate::kit::docker::{DockerClient, Dockerd};
use crate::kit::files::example;
use crate::kit::nginx::{nginx_binaries, NginxBinary};
use crate::kit::password;
use crate::kit::process::CmdOutput;
use crate::kit::stack::{failed_with, refused_at_once, step, succeeded, Mode, Stack};

#[test]
fn release_tags_are_created_once_and_latest_moves() -> Result<()> {
    let rules = example("protected-tags.rules")?;
    let mut dockerd: Option<Dockerd> = None;
    for binary in nginx_binaries()? {
        for mode in [Mode::Basic, Mode::Token] {
            let stack = step(&format!("[{mode}, {}] start a stack", binary.version), || {
                Stack::start_on(&binary, mode, &rules)
            })?;
            if dockerd.is_none() {
                dockerd = Some(step("start dockerd", || Dockerd::start(stack.nginx.addr()))?);
            }
            let dockerd = dockerd.as_ref().context("dockerd")?;
            with_docker(dockerd, &stack, &binary)?;
            with_skopeo_and_podman(&stack, &binary)?;
            spelled_otherwise(&stack, &binary)?;
            registry_down(&stack, &binary)?;
        }
    }
    Ok(())
}

/// What every client prints for the refused second push of `repository:v1`.
fn moved_tag(repository: &str) -> String {
    format!("denied: tag v1 of {repository} exists and may not be overwritten")
}

/// The digest the registry serves for `repository:tag`, asked straight.
fn served_digest(stack: &Stack, repository: &str, tag: &str) -> Result<String> {
    let response = stack.registry.request(
        "HEAD",
        &format!("/v2/{repository}/manifests/{tag}"),
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )],
        b"",
    )?;
    ensure!(
        response.status == 200,
        "{repository}:{tag}: the registry answered {}",
        response.status
    );
    response
        .header("docker-content-digest")
        .map(str::to_string)
        .context("no Docker-Content-Digest")
}

fn with_docker(dockerd: &Dockerd, stack: &Stack, binary: &NginxBinary) -> Result<()> {
    let label = format!("{}, {}", stack.mode, binary.version);
    let repository = "releases/docker";
    let client: DockerClient = dockerd.new_client()?;
    step(&format!("[{label}] docker login as alice (CI)"), || {
        succeeded(client.login(stack.nginx.addr(), "alice", &password("alice"))?)
    })?;
    let push = |tag: &str, content: &str| -> Result<CmdOutput> {
        let image = stack.image(&format!("{repository}:{tag}"));
        dockerd.import_tiny_image(&image, content)?;
        client.run(&["push", &image])
    };
    step(&format!("[{label}] docker pushes {repository}:v1"), || {
        succeeded(push("v1", &format!("first v1 ({label})\n"))?)
    })?;
    let first = served_digest(stack, repository, "v1")?;
    step(&format!("[{label}] docker cannot push {repository}:v1 again"), || {
        failed_with(
            refused_at_once(push("v1", &format!("second v1 ({label})\n"))?)?,
            &moved_tag(repository),
        )
    })?;
    ensure!(served_digest(stack, repository, "v1")? == first, "v1 moved");
    for round in ["first", "second"] {
        step(
            &format!("[{label}] docker pushes {repository}:latest ({round})"),
            || succeeded(push("latest", &format!("{round} latest ({label})\n"))?),
        )?;
    }
    Ok(())
}

fn with_skopeo_and_podman(stack: &Stack, binary: &NginxBinary) -> Result<()> {
    let label = format!("{}, {}", stack.mode, binary.version);
    let alice = step(&format!("[{label}] skopeo login as alice (CI)"), || {
        Tools::login_with(stack, "alice", &password("alice"))
    })?;
    for tool in ["skopeo", "podman"] {
        let repository = format!("releases/{tool}");
        let push = |tag: &str, content: &str| -> Result<CmdOutput> {
            let reference = format!("{repository}:{tag}");
            match tool {
                "skopeo" => alice.skopeo_push(&reference, content),
                _ => alice.podman_push(&reference, content),
            }
        };
        step(&format!("[{label}] {tool} pushes {repository}:v1"), || {
            succeeded(push("v1", &format!("first v1 ({label})\n"))?)
        })?;
        let first = served_digest(stack, &repository, "v1")?;
        step(&format!("[{label}] {tool} cannot push {repository}:v1 again"), || {
            failed_with(
                refused_at_once(push("v1", &format!("second v1 ({label})\n"))?)?,
                &moved_tag(&repository),
            )
        })?;
        ensure!(
            served_digest(stack, &repository, "v1")? == first,
            "{repository}:v1 moved"
        );
        for round in ["first", "second"] {
            step(
                &format!("[{label}] {tool} pushes {repository}:latest ({round})"),
                || succeeded(push("latest", &format!("{round} latest ({label})\n"))?),
            )?;
        }
    }
    let admin = step(&format!("[{label}] skopeo login as admin-parente"), || {
        Tools::login_with(stack, "admin-parente", &password("admin-parente"))
    })?;
    let before = served_digest(stack, "releases/skopeo", "v1")?;
    step(&format!("[{label}] the admin moves releases/skopeo:v1"), || {
        succeeded(admin.skopeo_push("releases/skopeo:v1", &format!("admin's v1 ({label})\n"))?)
    })?;
    ensure!(
        served_digest(stack, "releases/skopeo", "v1")? != before,
        "the admin's push did not move v1"
    );
    Ok(())
}

/// The existing tag v1 written another way (percent-encoded, with a query, by its digest's
/// neighbour): each is refused, or never reaches the registry as a move of v1. The body is a
/// manifest the registry holds already (under another tag), so a PUT let through would move v1.
fn spelled_otherwise(stack: &Stack, binary: &NginxBinary) -> Result<()> {
    let label = format!("{}, {}", stack.mode, binary.version);
    let first = stack.seed_image("releases/raw", "v1", &format!("raw v1 ({label})\n"))?;
    let other = stack.seed_image("releases/raw", "other", &format!("raw other ({label})\n"))?;
    let body = stack
        .registry
        .request(
            "GET",
            &format!("/v2/releases/raw/manifests/{}", other.manifest_digest),
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
            b"",
        )?
        .body;
    let authorization = stack.authorization(Some("alice"))?;
    let put = |tag: &str| -> Result<u16> {
        let response = stack.request(
            authorization.as_deref(),
            "PUT",
            &format!("/v2/releases/raw/manifests/{tag}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            &body,
        )?;
        Ok(response.status)
    };
    step(&format!("[{label}] v1 spelled otherwise is not moved"), || {
        for tag in ["v1", "v%31", "%76%31", "v1?x=1", "v1?tag=v2", "v1%3F", "v1/"] {
            let status = put(tag)?;
            ensure!(
                !(200..300).contains(&status),
                "PUT …/manifests/{tag} by alice answered {status}"
            );
            ensure!(
                served_digest(stack, "releases/raw", "v1")? == first.manifest_digest,
                "PUT …/manifests/{tag} ({status}) moved v1"
            );
        }
        // The honest twin: a new tag with the same body goes through.
        let status = put("v2")?;
        ensure!(status == 201, "PUT …/manifests/v2 by alice answered {status}");
        Ok(())
    })
}

/// With the registry's own address not answering, a push that needs the tag check is refused
/// with a 5xx, never let through.
fn registry_down(stack: &Stack, binary: &NginxBinary) -> Result<()> {
    let label = format!("{}, {}", stack.mode, binary.version);
    let authorization = stack.authorization(Some("alice"))?;
    let put = |tag: &str| -> Result<u16> {
        let response = stack.request(
            authorization.as_deref(),
            "PUT",
            &format!("/v2/releases/down/manifests/{tag}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            b"{}",
        )?;
        Ok(response.status)
    };
    let decisions = |status: &str| {
        let log = stack.decision_log();
        crate::kit::stack::lines_with(&log, &[status, "path=\"/v2/releases/down/manifests/v9\""]).len()
    };
    step(
        &format!("[{label}] with the registry up, the tag check lets a new tag through"),
        || {
            put("v9")?;
            // The registry itself refuses the empty manifest; csel-auth let it through.
            ensure!(decisions("status=200") == 1, "{}", stack.decision_log());
            Ok(())
        },
    )?;
    step(
        &format!("[{label}] with the registry frozen, the tag check refuses"),
        || {
            stack.registry.pause()?;
            let checked = put("v9");
            stack.registry.resume()?;
            let checked = checked?;
            // csel-auth answers 503, which nginx passes on as 500.
            ensure!(
                checked == 500,
                "PUT v9 with the registry paused: {checked}, expected 500"
            );
            ensure!(decisions("status=503") == 1, "{}", stack.decision_log());
            crate::kit::stack::expect_log_line(
                "csel-auth logged why",
                &stack.decision_log(),
                &[
                    "whether tag v9 of releases/down exists is unknown",
                    "push refused (503)",
                ],
            )
        },
    )?;
    Ok(())
}
