//! End-to-end: skopeo and podman against nginx + csel-auth + the CNCF
//! distribution registry, in basic and in token mode (one test per mode,
//! each a sequence of named steps; they run in parallel), and beside docker,
//! sharing docker's config.json.
//!
//! A refused push must end at once: every push refusal here is also timed.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{ensure, Result};

use crate::kit::containers::ContainerTools;
use crate::kit::docker::Dockerd;
use crate::kit::files::example;
use crate::kit::password;
use crate::kit::process::CmdOutput;
use crate::kit::stack::{failed_with, refused_at_once, step, succeeded, succeeded_with, Mode, Stack};

/// skopeo and podman with their own auth file, logged in as `user` (or not
/// logged in at all).
pub(super) struct Tools {
    tools: ContainerTools,
    stack_host: String,
}

impl Tools {
    fn anonymous(stack: &Stack) -> Result<Self> {
        Ok(Self {
            tools: ContainerTools::new(&[stack.nginx.addr()])?,
            stack_host: stack.host(),
        })
    }

    /// `skopeo login` as `user`; podman shares the auth file.
    fn login(stack: &Stack, user: &str) -> Result<Self> {
        Self::login_with(stack, user, &password(user))
    }

    /// `skopeo login` as `user` with `secret` (a password or an access key).
    pub(super) fn login_with(stack: &Stack, user: &str, secret: &str) -> Result<Self> {
        let tools = ContainerTools::new(&[stack.nginx.addr()])?;
        succeeded_with(
            tools.skopeo_login(stack.nginx.addr(), user, secret)?,
            "Login Succeeded!",
        )?;
        Ok(Self {
            tools,
            stack_host: stack.host(),
        })
    }

    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.stack_host)
    }

    /// `skopeo copy docker://HOST/NAME oci:…` (a pull into a fresh layout).
    fn skopeo_pull(&self, name: &str) -> Result<CmdOutput> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let target = self.tools.dir().join(format!("pulled-{n}"));
        self.tools.skopeo(&[
            "copy",
            &format!("docker://{}", self.reference(name)),
            &format!("oci:{}:pulled", target.display()),
        ])
    }

    /// `skopeo copy oci:… docker://HOST/NAME` of a fresh one-layer image.
    pub(super) fn skopeo_push(&self, name: &str, content: &str) -> Result<CmdOutput> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let image = self.tools.oci_image(&format!("push-{n}"), "1", content)?;
        self.tools.skopeo(&[
            "copy",
            &image.reference(),
            &format!("docker://{}", self.reference(name)),
        ])
    }

    fn podman_pull(&self, name: &str) -> Result<CmdOutput> {
        self.tools.podman(&["pull", &self.reference(name)])
    }

    /// `podman import` of a fresh one-layer image, then `podman push`.
    pub(super) fn podman_push(&self, name: &str, content: &str) -> Result<CmdOutput> {
        let reference = self.reference(name);
        self.tools.podman_import_tiny(&reference, content)?;
        self.tools.podman(&["push", &reference])
    }
}

/// The texts skopeo and podman print for a refusal (podman: the same after
/// `Error: `), by mode and by whether the client is logged in. In token mode
/// csel-auth refuses a token holder with a 401 whose Bearer challenge says
/// `error="insufficient_scope"`; the client adds the error of the JSON body
/// nginx sends with it (`unauthorized`).
pub(super) struct Expected<'a> {
    pub(super) stack: &'a Stack,
}

/// What the `Expected` texts look like inside skopeo's `level=fatal msg="…"`.
pub(super) fn skopeo_quoted(text: &str) -> String {
    text.replace('"', "\\\"").replace('\n', "\\n")
}

/// A refused push: it failed, at once, and its output contains `expected`.
pub(super) fn push_refused(out: CmdOutput, expected: &str) -> Result<CmdOutput> {
    failed_with(refused_at_once(out)?, expected)
}

const TOKEN_DENIED: &str = "errors:\ndenied: requested access to the resource is denied\n";

/// A logged-in user refused in basic mode: nginx's 403 body. Its non-null
/// `detail` makes the clients print the message with the code.
const BASIC_DENIED: &str = "denied: requested access to the resource is denied";

impl Expected<'_> {
    /// A refused pull of `name` (`repository:tag`).
    fn pull_refused(&self, name: &str, anonymous: bool) -> String {
        let (repository, tag) = name.split_once(':').unwrap_or((name, "latest"));
        let host = self.stack.host();
        let cause = match (self.stack.mode, anonymous) {
            (Mode::Basic, true) => "unauthorized".to_string(),
            (Mode::Basic, false) => BASIC_DENIED.to_string(),
            (Mode::Token, _) => format!("{TOKEN_DENIED}unauthorized"),
        };
        format!("initializing source docker://{host}/{name}: reading manifest {tag} in {host}/{repository}: {cause}")
    }

    /// A refused push to `repository` that the client may read (the blob
    /// check passes, starting the upload is refused).
    fn upload_refused(&self, repository: &str, anonymous: bool) -> String {
        let host = self.stack.host();
        let cause = match (self.stack.mode, anonymous) {
            (Mode::Basic, true) => "unauthorized".to_string(),
            (Mode::Basic, false) => BASIC_DENIED.to_string(),
            (Mode::Token, _) => format!("{TOKEN_DENIED}unauthorized"),
        };
        format!("writing blob: initiating layer upload to /v2/{repository}/blobs/uploads/ in {host}: {cause}")
    }

    /// A refused push to `repository` that the client may not even read
    /// (refused at the blob check; the digest varies and is left out).
    pub(super) fn blob_check_refused(&self, repository: &str) -> String {
        let host = self.stack.host();
        match self.stack.mode {
            Mode::Basic => {
                format!("at destination: failed to read from destination repository {repository}: 403 (Forbidden)")
            }
            // A HEAD answer has no body to parse.
            Mode::Token => format!(
                "exists in {host}/{repository}: {TOKEN_DENIED}error parsing HTTP 401 response body: unexpected end of \
                 JSON input: \"\""
            ),
        }
    }

    /// `login` with a wrong password (token mode: the realm refuses the token).
    fn wrong_password(&self) -> String {
        format!("logging into \"{}\": invalid username/password", self.stack.host())
    }
}

#[test]
fn skopeo_and_podman_basic_mode() -> Result<()> {
    scenarios(Mode::Basic)
}

#[test]
fn skopeo_and_podman_token_mode() -> Result<()> {
    scenarios(Mode::Token)
}

fn scenarios(mode: Mode) -> Result<()> {
    let registry_rules = example("registry.rules")?;
    let stack = step(&format!("[{mode}] start a stack with examples/registry.rules"), || {
        Stack::start(mode, &registry_rules)
    })?;
    seed_000(&stack)?;
    rules_change(&stack, &registry_rules)?;
    drop(stack);

    let stack = step(
        &format!("[{mode}] start a stack with examples/readonly-admins.rules"),
        || Stack::start(mode, &example("readonly-admins.rules")?),
    )?;
    seed_002(&stack)
}

/// examples/registry.rules: anonymous pull of library/*, coolteam/* for
/// alice and bob, per-user namespaces (issue 5 with skopeo and podman).
fn seed_000(stack: &Stack) -> Result<()> {
    let mode = stack.mode;
    let expect = Expected { stack };
    stack.seed_image("library/alpine", "1", &format!("library/alpine ({mode})\n"))?;
    stack.seed_image("coolteam/app", "1", &format!("coolteam/app ({mode})\n"))?;

    let anonymous = Tools::anonymous(stack)?;
    step(
        &format!("[{mode} 000] anonymous skopeo pull of library/alpine works"),
        || succeeded(anonymous.skopeo_pull("library/alpine:1")?),
    )?;
    step(
        &format!("[{mode} 000] anonymous podman pull of library/alpine works"),
        || succeeded(anonymous.podman_pull("library/alpine:1")?),
    )?;
    step(
        &format!("[{mode} 000] anonymous skopeo pull of coolteam/app is refused"),
        || {
            failed_with(
                anonymous.skopeo_pull("coolteam/app:1")?,
                &format!(
                    "level=fatal msg=\"{}",
                    skopeo_quoted(&expect.pull_refused("coolteam/app:1", true))
                ),
            )
        },
    )?;
    step(
        &format!("[{mode} 000] anonymous podman pull of coolteam/app is refused"),
        || {
            failed_with(
                anonymous.podman_pull("coolteam/app:1")?,
                &format!("Error: {}", expect.pull_refused("coolteam/app:1", true)),
            )
        },
    )?;
    step(
        &format!("[{mode} 000] anonymous skopeo push to library/alpine is refused"),
        || {
            push_refused(
                anonymous.skopeo_push("library/alpine:anonymous", "anonymous push\n")?,
                &skopeo_quoted(&expect.upload_refused("library/alpine", true)),
            )
        },
    )?;
    ensure!(!stack.registry_has_manifest("library/alpine", "anonymous")?);

    step(
        &format!("[{mode} 000] skopeo login with a wrong password fails"),
        || {
            failed_with(
                anonymous
                    .tools
                    .skopeo_login(stack.nginx.addr(), "alice", "not-alices-password")?,
                &format!("level=fatal msg=\"{}", skopeo_quoted(&expect.wrong_password())),
            )
        },
    )?;
    step(
        &format!("[{mode} 000] podman login with a wrong password fails"),
        || {
            failed_with(
                anonymous
                    .tools
                    .podman_login(stack.nginx.addr(), "alice", "not-alices-password")?,
                &format!("Error: {}", expect.wrong_password()),
            )
        },
    )?;

    let alice = step(&format!("[{mode} 000] alice logs in with skopeo"), || {
        Tools::login(stack, "alice")
    })?;
    step(&format!("[{mode} 000] alice pulls coolteam/app with skopeo"), || {
        succeeded(alice.skopeo_pull("coolteam/app:1")?)
    })?;
    step(&format!("[{mode} 000] alice pulls coolteam/app with podman"), || {
        succeeded(alice.podman_pull("coolteam/app:1")?)
    })?;
    step(
        &format!("[{mode} 000] alice pushes coolteam/app:skopeo with skopeo"),
        || {
            succeeded_with(
                alice.skopeo_push("coolteam/app:skopeo", "alice with skopeo\n")?,
                "Writing manifest to image destination",
            )
        },
    )?;
    step(
        &format!("[{mode} 000] alice pushes coolteam/app:podman with podman"),
        || {
            succeeded_with(
                alice.podman_push("coolteam/app:podman", "alice with podman\n")?,
                "Writing manifest to image destination",
            )
        },
    )?;
    ensure!(stack.registry_has_manifest("coolteam/app", "skopeo")?);
    ensure!(stack.registry_has_manifest("coolteam/app", "podman")?);

    let bob = step(&format!("[{mode} 000] bob logs in with skopeo"), || {
        Tools::login(stack, "bob")
    })?;
    step(
        &format!("[{mode} 000] bob (coolteam) pulls alice's coolteam/app:podman"),
        || succeeded(bob.skopeo_pull("coolteam/app:podman")?),
    )?;

    let carol = step(&format!("[{mode} 000] carol logs in with skopeo"), || {
        Tools::login(stack, "carol")
    })?;
    step(
        &format!("[{mode} 000] carol (not in coolteam) cannot pull coolteam/app with skopeo"),
        || {
            failed_with(
                carol.skopeo_pull("coolteam/app:1")?,
                &format!(
                    "level=fatal msg=\"{}",
                    skopeo_quoted(&expect.pull_refused("coolteam/app:1", false))
                ),
            )
        },
    )?;
    step(
        &format!("[{mode} 000] carol cannot pull coolteam/app with podman"),
        || {
            failed_with(
                carol.podman_pull("coolteam/app:1")?,
                &format!("Error: {}", expect.pull_refused("coolteam/app:1", false)),
            )
        },
    )?;
    step(
        &format!("[{mode} 000] carol cannot push to coolteam/app with skopeo"),
        || {
            push_refused(
                carol.skopeo_push("coolteam/app:carol", "carol's push to coolteam\n")?,
                &skopeo_quoted(&expect.blob_check_refused("coolteam/app")),
            )
        },
    )?;
    step(
        &format!("[{mode} 000] carol cannot push to coolteam/app with podman"),
        || {
            push_refused(
                carol.podman_push("coolteam/app:carol-podman", "carol's podman push to coolteam\n")?,
                &expect.blob_check_refused("coolteam/app"),
            )
        },
    )?;
    ensure!(!stack.registry_has_manifest("coolteam/app", "carol")?);
    ensure!(!stack.registry_has_manifest("coolteam/app", "carol-podman")?);
    step(&format!("[{mode} 000] carol pulls library/alpine with podman"), || {
        succeeded(carol.podman_pull("library/alpine:1")?)
    })?;

    // Per-user namespaces: carol owns carol/*, and only that.
    step(
        &format!("[{mode} 000] carol pushes to her namespace with skopeo"),
        || succeeded(carol.skopeo_push("carol/tools:1", "carol's tools\n")?),
    )?;
    step(
        &format!("[{mode} 000] carol pushes to her namespace with podman"),
        || succeeded(carol.podman_push("carol/podman:1", "carol's podman image\n")?),
    )?;
    step(&format!("[{mode} 000] carol pulls her own image back"), || {
        succeeded(carol.skopeo_pull("carol/tools:1")?)
    })?;
    step(&format!("[{mode} 000] alice cannot read carol's namespace"), || {
        failed_with(
            alice.skopeo_pull("carol/tools:1")?,
            &skopeo_quoted(&expect.pull_refused("carol/tools:1", false)),
        )
    })?;
    step(&format!("[{mode} 000] carol cannot push to alice's namespace"), || {
        push_refused(
            carol.skopeo_push("alice/tools:1", "carol in alice's namespace\n")?,
            &skopeo_quoted(&expect.blob_check_refused("alice/tools")),
        )
    })?;
    ensure!(stack.registry_has_manifest("carol/tools", "1")?);
    ensure!(stack.registry_has_manifest("carol/podman", "1")?);
    ensure!(!stack.registry_has_manifest("alice/tools", "1")?);
    Ok(())
}

/// A rules change during the run takes effect for the next pull.
fn rules_change(stack: &Stack, original: &str) -> Result<()> {
    let mode = stack.mode;
    let expect = Expected { stack };
    let dave = step(&format!("[{mode} 000] dave logs in with skopeo"), || {
        Tools::login(stack, "dave")
    })?;
    step(&format!("[{mode} 000] dave cannot pull coolteam/app"), || {
        failed_with(
            dave.skopeo_pull("coolteam/app:1")?,
            &skopeo_quoted(&expect.pull_refused("coolteam/app:1", false)),
        )
    })?;
    step(&format!("[{mode} 000] rules change: dave may pull coolteam/*"), || {
        stack.set_rules(&format!("{original}\ngrant pull on coolteam to dave\n"))
    })?;
    step(
        &format!("[{mode} 000] dave's next skopeo pull of coolteam/app works"),
        || succeeded(dave.skopeo_pull("coolteam/app:1")?),
    )?;
    step(
        &format!("[{mode} 000] dave's next podman pull of coolteam/app works"),
        || succeeded(dave.podman_pull("coolteam/app:1")?),
    )?;
    step(&format!("[{mode} 000] rules change back"), || stack.set_rules(original))?;
    step(
        &format!("[{mode} 000] dave's next pull of coolteam/app is refused again"),
        || {
            failed_with(
                dave.skopeo_pull("coolteam/app:1")?,
                &skopeo_quoted(&expect.pull_refused("coolteam/app:1", false)),
            )
        },
    )?;
    Ok(())
}

/// examples/readonly-admins.rules: admin-* users push, other users pull
/// only, anonymous nothing.
fn seed_002(stack: &Stack) -> Result<()> {
    let mode = stack.mode;
    let expect = Expected { stack };
    let admin = step(&format!("[{mode} 002] admin-ops logs in"), || {
        Tools::login(stack, "admin-ops")
    })?;
    step(&format!("[{mode} 002] admin-ops pushes team/app:1 with skopeo"), || {
        succeeded(admin.skopeo_push("team/app:1", "readonly-admins team/app\n")?)
    })?;
    step(
        &format!("[{mode} 002] admin-ops pushes team/tool:1 with podman"),
        || succeeded(admin.podman_push("team/tool:1", "readonly-admins team/tool\n")?),
    )?;
    let dave = step(&format!("[{mode} 002] dave logs in"), || Tools::login(stack, "dave"))?;
    step(&format!("[{mode} 002] dave pulls team/app:1 with skopeo"), || {
        succeeded(dave.skopeo_pull("team/app:1")?)
    })?;
    step(&format!("[{mode} 002] dave pulls team/tool:1 with podman"), || {
        succeeded(dave.podman_pull("team/tool:1")?)
    })?;
    step(&format!("[{mode} 002] dave cannot push with skopeo"), || {
        push_refused(
            dave.skopeo_push("team/app:dave", "dave's push\n")?,
            &skopeo_quoted(&expect.upload_refused("team/app", false)),
        )
    })?;
    step(&format!("[{mode} 002] dave cannot push with podman"), || {
        push_refused(
            dave.podman_push("team/app:dave-podman", "dave's podman push\n")?,
            &expect.upload_refused("team/app", false),
        )
    })?;
    ensure!(!stack.registry_has_manifest("team/app", "dave")?);
    ensure!(!stack.registry_has_manifest("team/app", "dave-podman")?);
    let anonymous = Tools::anonymous(stack)?;
    step(&format!("[{mode} 002] anonymous cannot pull with skopeo"), || {
        failed_with(
            anonymous.skopeo_pull("team/app:1")?,
            &skopeo_quoted(&expect.pull_refused("team/app:1", true)),
        )
    })?;
    step(&format!("[{mode} 002] anonymous cannot pull with podman"), || {
        failed_with(
            anonymous.podman_pull("team/tool:1")?,
            &format!("Error: {}", expect.pull_refused("team/tool:1", true)),
        )
    })?;
    Ok(())
}

/// docker, podman and skopeo on one machine sharing docker's config.json, in
/// token mode: `docker login` must leave credentials that podman and skopeo
/// can use. docker stores an identity token instead of the password when the
/// token realm hands it a refresh token, and containers/image cannot use one
/// (`podman login` then fails with "currently logged in, auth file contains an
/// Identity token"); so csel-auth issues refresh tokens only when the operator
/// turns them on.
#[test]
fn docker_podman_and_skopeo_share_one_docker_config_in_token_mode() -> Result<()> {
    let stack = step(
        "[shared config] start a token-mode stack with examples/registry.rules",
        || Stack::start(Mode::Token, &example("registry.rules")?),
    )?;
    stack.seed_image("coolteam/app", "1", "coolteam/app (shared docker config)\n")?;
    let dockerd = step("[shared config] start dockerd", || Dockerd::start(stack.nginx.addr()))?;
    let docker = dockerd.new_client()?;
    let host = stack.host();
    step("[shared config] alice logs in with docker", || {
        succeeded_with(
            docker.login(stack.nginx.addr(), "alice", &password("alice"))?,
            "Login Succeeded",
        )
    })?;
    let config = docker.config_dir().join("config.json");
    let authfile = config
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", config.display()))?;
    step(
        "[shared config] docker's config.json holds alice's password, not an identity token",
        || {
            let text = std::fs::read_to_string(&config)?;
            let json: serde_json::Value = serde_json::from_str(&text)?;
            let entry = &json["auths"][host.as_str()];
            ensure!(
                entry.get("identitytoken").is_none(),
                "docker stored an identity token:\n{text}"
            );
            ensure!(entry["auth"].is_string(), "no credentials for {host}:\n{text}");
            Ok(())
        },
    )?;

    // Both read docker's config.json through --authfile; their own
    // REGISTRY_AUTH_FILE and DOCKER_CONFIG are empty.
    let tools = ContainerTools::new(&[stack.nginx.addr()])?;
    let alice_password = password("alice");
    let login = [
        "login",
        "--authfile",
        authfile,
        "-u",
        "alice",
        "-p",
        &alice_password,
        &host,
    ];
    step("[shared config] podman login with docker's config.json", || {
        succeeded_with(tools.podman(&login)?, "Login Succeeded!")
    })?;
    step("[shared config] skopeo login with docker's config.json", || {
        succeeded_with(tools.skopeo(&login)?, "Login Succeeded!")
    })?;
    let private = format!("docker://{host}/coolteam/app:1");
    let target = format!("oci:{}:pulled", tools.dir().join("shared-config-pull").display());
    step(
        "[shared config] skopeo pulls the private coolteam/app with docker's config.json",
        || succeeded(tools.skopeo(&["copy", "--authfile", authfile, &private, &target])?),
    )?;
    step(
        "[shared config] podman pulls the private coolteam/app with docker's config.json",
        || succeeded(tools.podman(&["pull", "--authfile", authfile, &stack.image("coolteam/app:1")])?),
    )?;
    step(
        "[shared config] docker still pulls coolteam/app after podman and skopeo wrote its config",
        || succeeded(docker.run(&["pull", &stack.image("coolteam/app:1")])?),
    )?;
    Ok(())
}
