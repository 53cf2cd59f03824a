//! End-to-end: the real docker CLI and engine against nginx + csel-auth +
//! the CNCF distribution registry, in basic and in token mode.
//!
//! One test, one dockerd (shared by four registry stacks): every scenario is
//! a sequence of named steps, and a failure names its step and shows the
//! client's output. A refused `docker push` must end at once, in both modes
//! (docker retries an upload refused with an error it does not take as final
//! for ~50 s); further push refusals are checked with skopeo, podman or raw
//! HTTP (tests/e2e/skopeo_podman.rs, tests/e2e/paths.rs).

use anyhow::{anyhow, ensure, Result};

use crate::kit::docker::{DockerClient, Dockerd};
use crate::kit::files::example;
use crate::kit::password;
use crate::kit::process::CmdOutput;
use crate::kit::stack::{
    expect_log_line, failed_with, failed_with_stderr, refused_at_once, step, succeeded, succeeded_with, Mode, Stack,
};

/// docker's text for the `denied` error code (what a Bearer challenge with
/// `error="insufficient_scope"` maps to).
pub(super) const DENIED: &str = "denied: requested access to the resource is denied";

/// A refused `docker push`: it failed, at once, with exactly `expected` on stderr.
fn push_refused(out: CmdOutput, expected: &str) -> Result<CmdOutput> {
    failed_with_stderr(refused_at_once(out)?, expected)
}

/// `docker pull` of `repository` refused with `insufficient_scope` or with a
/// 403 (docker's `notFoundError`).
fn pull_access_denied(stack: &Stack, repository: &str) -> String {
    format!(
        "Error response from daemon: pull access denied for {}, repository does not exist or may \
         require 'docker login': {DENIED}",
        stack.image(repository)
    )
}

/// What `docker pull` of `repository` says when csel-auth refuses it: to an
/// anonymous client (`anonymous`) or to a logged-in one.
fn pull_refused(stack: &Stack, repository: &str, anonymous: bool) -> String {
    match (stack.mode, anonymous) {
        (Mode::Basic, true) => no_basic_auth_credentials(stack, repository, "1"),
        _ => pull_access_denied(stack, repository),
    }
}

/// The status csel-auth refuses a request with (through nginx): 401 to
/// anonymous clients; to logged-in ones 403 in basic mode, and in token mode
/// 401 with `error="insufficient_scope"` in the Bearer challenge, which
/// docker reports as "denied".
fn refusal_status(stack: &Stack, anonymous: bool) -> u16 {
    match (stack.mode, anonymous) {
        (Mode::Basic, false) => 403,
        _ => 401,
    }
}

/// What docker says when a request needs credentials and it has none.
fn no_basic_auth_credentials(stack: &Stack, image: &str, tag: &str) -> String {
    format!(
        "Error response from daemon: Head \"http://{}/v2/{image}/manifests/{tag}\": no basic auth credentials",
        stack.host()
    )
}

/// `docker login` with a wrong password or an unknown user.
fn login_refused(stack: &Stack) -> String {
    match stack.mode {
        Mode::Token => format!(
            "Error response from daemon: Get \"http://{}/v2/\": unauthorized: wrong user name or password",
            stack.host()
        ),
        Mode::Basic => format!(
            "Error response from daemon: login attempt to http://{}/v2/ failed with status: 401 Unauthorized",
            stack.host()
        ),
    }
}

/// A client of `dockerd` logged in to `stack` as `user`.
fn logged_in(dockerd: &Dockerd, stack: &Stack, user: &str) -> Result<DockerClient> {
    let client = dockerd.new_client()?;
    succeeded_with(
        client.login(stack.nginx.addr(), user, &password(user))?,
        "Login Succeeded",
    )?;
    Ok(client)
}

#[test]
fn docker_cli_end_to_end() -> Result<()> {
    let registry_rules = example("registry.rules")?;
    let readonly_rules = example("readonly-admins.rules")?;
    let token_000 = step("start token-mode stack with examples/registry.rules", || {
        Stack::start(Mode::Token, &registry_rules)
    })?;
    let basic_000 = step("start basic-mode stack with examples/registry.rules", || {
        Stack::start(Mode::Basic, &registry_rules)
    })?;
    let token_002 = step("start token-mode stack with examples/readonly-admins.rules", || {
        Stack::start(Mode::Token, &readonly_rules)
    })?;
    let basic_002 = step("start basic-mode stack with examples/readonly-admins.rules", || {
        Stack::start(Mode::Basic, &readonly_rules)
    })?;
    // docker treats every 127.0.0.0/8 registry as insecure (plain HTTP); the
    // flag names one of them anyway.
    let dockerd = step("start dockerd", || Dockerd::start(token_000.nginx.addr()))?;

    for (stack, user, repository) in [
        (&token_000, "carol", "coolteam/app"),
        (&basic_000, "carol", "coolteam/app"),
        (&token_002, "dave", "team/app"),
        (&basic_002, "dave", "team/app"),
    ] {
        DeniedPush::prepare(&dockerd, stack, user, repository, user)?.check()?;
    }
    for stack in [&token_000, &basic_000] {
        seed_000(&dockerd, stack)?;
        personal_namespace_and_refused_mount(&dockerd, stack)?;
        rules_change(&dockerd, stack, &registry_rules)?;
    }
    for stack in [&token_002, &basic_002] {
        seed_002(&dockerd, stack)?;
    }
    Ok(())
}

/// A `docker push` that csel-auth refuses (the upload is refused: the user
/// may read the repository, or not even that).
struct DeniedPush<'a> {
    stack: &'a Stack,
    user: &'static str,
    repository: &'static str,
    tag: &'static str,
    image: String,
    client: DockerClient,
}

impl<'a> DeniedPush<'a> {
    /// Logs `user` in and imports a fresh image tagged `repository:tag`.
    fn prepare(
        dockerd: &Dockerd,
        stack: &'a Stack,
        user: &'static str,
        repository: &'static str,
        tag: &'static str,
    ) -> Result<Self> {
        let mode = stack.mode;
        let client = step(&format!("[{mode}] {user} logs in"), || logged_in(dockerd, stack, user))?;
        let image = stack.image(&format!("{repository}:{tag}"));
        dockerd.import_tiny_image(&image, &format!("{user}'s refused push to {repository} ({mode})\n"))?;
        Ok(Self {
            stack,
            user,
            repository,
            tag,
            image,
            client,
        })
    }

    /// In token mode docker takes the `insufficient_scope` challenge as
    /// `denied`, in basic mode the 403's JSON body (which must be one docker
    /// does not retry); both end the push at once with the same text.
    fn check(&self) -> Result<()> {
        let mode = self.stack.mode;
        step(
            &format!("[{mode}] {} cannot docker push to {}", self.user, self.repository),
            || {
                push_refused(self.client.run(&["push", &self.image])?, DENIED)?;
                ensure!(
                    !self.stack.registry_has_manifest(self.repository, self.tag)?,
                    "the refused push left a manifest"
                );
                Ok(())
            },
        )
    }
}

/// examples/registry.rules: anonymous pull of library/*, coolteam/* private
/// to alice and bob (issue 5 with the docker CLI in token mode).
fn seed_000(dockerd: &Dockerd, stack: &Stack) -> Result<()> {
    let mode = stack.mode;
    let library = stack.seed_image("library/alpine", "1", &format!("library/alpine ({mode})\n"))?;
    stack.seed_image("coolteam/app", "1", &format!("coolteam/app ({mode})\n"))?;
    let library_image = stack.image("library/alpine:1");
    let team_image = stack.image("coolteam/app:1");
    let anonymous = dockerd.new_client()?;

    match mode {
        Mode::Token => {
            step("[token 000] anonymous docker pull of library/alpine works", || {
                succeeded_with(
                    anonymous.run(&["pull", &library_image])?,
                    &format!("Digest: {}", library.manifest_digest),
                )
            })?;
            step("[token 000] anonymous docker pull of coolteam/app is refused", || {
                failed_with(
                    anonymous.run(&["pull", &team_image])?,
                    &pull_refused(stack, "coolteam/app", true),
                )
            })?;
        }
        Mode::Basic => {
            // Why token mode exists: with a Basic challenge docker never
            // sends anonymous requests on.
            step(
                "[basic 000] anonymous docker pull of library/alpine needs a login",
                || {
                    failed_with(
                        anonymous.run(&["pull", &library_image])?,
                        &no_basic_auth_credentials(stack, "library/alpine", "1"),
                    )
                },
            )?;
            step(
                "[basic 000] anonymous docker pull of coolteam/app needs a login",
                || {
                    failed_with(
                        anonymous.run(&["pull", &team_image])?,
                        &no_basic_auth_credentials(stack, "coolteam/app", "1"),
                    )
                },
            )?;
        }
    }

    step(
        &format!("[{mode} 000] anonymous docker push to library/alpine is refused"),
        || {
            let expected = match mode {
                Mode::Token => DENIED.to_string(),
                Mode::Basic => "no basic auth credentials".to_string(),
            };
            let image = stack.image("library/alpine:anonymous");
            dockerd.import_tiny_image(&image, &format!("anonymous push ({mode})\n"))?;
            push_refused(anonymous.run(&["push", &image])?, &expected)?;
            ensure!(!stack.registry_has_manifest("library/alpine", "anonymous")?);
            Ok(())
        },
    )?;
    step(
        &format!("[{mode} 000] docker login with a wrong password fails"),
        || {
            failed_with(
                anonymous.login(stack.nginx.addr(), "alice", "not-alices-password")?,
                &login_refused(stack),
            )
        },
    )?;

    let alice = step(&format!("[{mode} 000] alice logs in"), || {
        logged_in(dockerd, stack, "alice")
    })?;
    step(&format!("[{mode} 000] alice pulls coolteam/app"), || {
        succeeded(alice.run(&["pull", &team_image])?)
    })?;
    let pushed = stack.image("coolteam/app:2");
    step(&format!("[{mode} 000] alice pushes coolteam/app:2"), || {
        alice.run(&["tag", &team_image, &pushed])?.ok()?;
        succeeded_with(alice.run(&["push", &pushed])?, "2: digest: sha256:")
    })?;
    ensure!(
        stack.registry_has_manifest("coolteam/app", "2")?,
        "coolteam/app:2 is not in the registry"
    );
    let bob = step(&format!("[{mode} 000] bob logs in"), || {
        logged_in(dockerd, stack, "bob")
    })?;
    step(
        &format!("[{mode} 000] bob (coolteam) pulls alice's coolteam/app:2"),
        || succeeded(bob.run(&["pull", &pushed])?),
    )?;
    step(&format!("[{mode} 000] bob pulls library/alpine"), || {
        succeeded(bob.run(&["pull", &library_image])?)
    })?;

    let carol = step(&format!("[{mode} 000] carol logs in"), || {
        logged_in(dockerd, stack, "carol")
    })?;
    step(
        &format!("[{mode} 000] carol (not in coolteam) cannot pull coolteam/app"),
        || {
            failed_with(
                carol.run(&["pull", &team_image])?,
                &pull_refused(stack, "coolteam/app", false),
            )
        },
    )?;
    step(&format!("[{mode} 000] carol pulls library/alpine"), || {
        succeeded(carol.run(&["pull", &library_image])?)
    })?;
    Ok(())
}

/// carol pushes to her own namespace; alice then pushes the same image to
/// coolteam/app from the same engine, which tries to mount the layer from
/// carol/x. csel-auth refuses the mount (alice cannot read carol/x) and the
/// push still succeeds by uploading the layer.
fn personal_namespace_and_refused_mount(dockerd: &Dockerd, stack: &Stack) -> Result<()> {
    let mode = stack.mode;
    let carol = logged_in(dockerd, stack, "carol")?;
    let alice = logged_in(dockerd, stack, "alice")?;
    let carols = stack.image("carol/x:1");
    step(&format!("[{mode} 000] carol pushes to her namespace carol/x"), || {
        dockerd.import_tiny_image(&carols, &format!("carol's own image ({mode})\n"))?;
        succeeded_with(carol.run(&["push", &carols])?, "1: digest: sha256:")
    })?;
    step(&format!("[{mode} 000] alice cannot push to carol's namespace"), || {
        // The refusal status itself, with raw HTTP.
        let authorization = stack.authorization(Some("alice"))?;
        let response = stack.request(authorization.as_deref(), "POST", "/v2/carol/x/blobs/uploads/", &[], b"")?;
        ensure!(
            response.status == refusal_status(stack, false),
            "POST as alice to carol/x: {response:?}"
        );
        Ok(())
    })?;

    let alices = stack.image("coolteam/app:mounted");
    step(
        &format!("[{mode} 000] alice pushes the same image to coolteam/app: the mount from carol/x is refused, the upload works"),
        || {
            alice.run(&["tag", &carols, &alices])?.ok()?;
            let out = succeeded_with(alice.run(&["push", &alices])?, "mounted: digest: sha256:")?;
            ensure!(!out.combined().contains("Mounted from"), "docker says it mounted:\n{out}");
            // nginx's access log: the mount POST refused, then a plain upload.
            let access = stack.access_log();
            let refused = format!("HTTP/1.1\" {} ", refusal_status(stack, false));
            let lines: Vec<&str> = access.lines().collect();
            let mount = lines
                .iter()
                .position(|line| {
                    line.contains("\"POST /v2/coolteam/app/blobs/uploads/?from=carol%2Fx&mount=sha256%3A")
                        && line.contains(&refused)
                })
                .ok_or_else(|| anyhow!("no refused mount POST from carol/x in nginx's access log:\n{access}"))?;
            ensure!(
                lines[mount..]
                    .iter()
                    .any(|line| line.contains("\"POST /v2/coolteam/app/blobs/uploads/ HTTP/1.1\" 202 ")),
                "no plain upload POST after the refused mount in nginx's access log:\n{access}"
            );
            expect_log_line(
                "csel-auth logged the refused mount",
                &stack.decision_log(),
                &[
                    &format!("status={}", refusal_status(stack, false)),
                    "user=\"alice\"",
                    "method=\"POST\"",
                    "path=\"/v2/coolteam/app/blobs/uploads/\"",
                    "reason=mount source carol/x is not readable",
                ],
            )?;
            ensure!(
                stack.registry_has_manifest("coolteam/app", "mounted")?,
                "coolteam/app:mounted is not in the registry"
            );
            Ok(out)
        },
    )?;
    step(&format!("[{mode} 000] alice reads the pushed manifest"), || {
        let authorization = stack.authorization(Some("alice"))?;
        let response = stack.request(
            authorization.as_deref(),
            "GET",
            "/v2/coolteam/app/manifests/mounted",
            &[("Accept", "application/vnd.docker.distribution.manifest.v2+json")],
            b"",
        )?;
        ensure!(response.status == 200, "GET the manifest as alice: {response:?}");
        Ok(())
    })?;
    Ok(())
}

/// A rules change while everything runs takes effect for the next pull.
fn rules_change(dockerd: &Dockerd, stack: &Stack, original: &str) -> Result<()> {
    let mode = stack.mode;
    let team_image = stack.image("coolteam/app:1");
    let dave = logged_in(dockerd, stack, "dave")?;
    step(&format!("[{mode} 000] dave cannot pull coolteam/app"), || {
        failed_with(
            dave.run(&["pull", &team_image])?,
            &pull_refused(stack, "coolteam/app", false),
        )
    })?;
    step(&format!("[{mode} 000] rules change: dave may pull coolteam/*"), || {
        stack.set_rules(&format!("{original}\ngrant pull on coolteam to dave\n"))
    })?;
    step(&format!("[{mode} 000] dave's next pull of coolteam/app works"), || {
        succeeded(dave.run(&["pull", &team_image])?)
    })?;
    step(&format!("[{mode} 000] rules change back"), || stack.set_rules(original))?;
    step(
        &format!("[{mode} 000] dave's next pull of coolteam/app is refused again"),
        || {
            failed_with(
                dave.run(&["pull", &team_image])?,
                &pull_refused(stack, "coolteam/app", false),
            )
        },
    )?;
    Ok(())
}

/// examples/readonly-admins.rules: admin-* users push, other users pull
/// only (dave's refused push is checked first), anonymous nothing.
fn seed_002(dockerd: &Dockerd, stack: &Stack) -> Result<()> {
    let mode = stack.mode;
    let image = stack.image("team/app:1");
    let admin = step(&format!("[{mode} 002] admin-ops logs in"), || {
        logged_in(dockerd, stack, "admin-ops")
    })?;
    step(&format!("[{mode} 002] admin-ops pushes team/app:1"), || {
        dockerd.import_tiny_image(&image, &format!("readonly-admins team/app ({mode})\n"))?;
        succeeded_with(admin.run(&["push", &image])?, "1: digest: sha256:")
    })?;
    let dave = step(&format!("[{mode} 002] dave logs in"), || {
        logged_in(dockerd, stack, "dave")
    })?;
    step(&format!("[{mode} 002] dave pulls team/app:1"), || {
        dockerd.docker(&["rmi", &image])?.ok()?;
        succeeded(dave.run(&["pull", &image])?)
    })?;
    let anonymous = dockerd.new_client()?;
    step(&format!("[{mode} 002] anonymous cannot pull team/app"), || {
        failed_with(
            anonymous.run(&["pull", &image])?,
            &pull_refused(stack, "team/app", true),
        )
    })?;
    step(
        &format!("[{mode} 002] docker login of an unknown user is refused"),
        || {
            failed_with(
                anonymous.login(stack.nginx.addr(), "nobody", "nothing")?,
                &login_refused(stack),
            )
        },
    )?;
    Ok(())
}
