//! End-to-end: docker, skopeo and podman log in as an LDAP user (a real slapd) and with a JWT
//! (keys from a JWKS server on 127.0.0.1), push and pull through nginx and the registry, in basic
//! and in token mode; a push the directory's groups do not allow is refused at once.

use anyhow::{ensure, Result};

use super::skopeo_podman::{push_refused, skopeo_quoted, Expected, Tools};
use crate::kit::docker::Dockerd;
use crate::kit::jwks::{github_claims, jwks, JwksServer, SigningKey, AUDIENCE, GITHUB};
use crate::kit::slapd::{SERVICE_DN, SERVICE_PASSWORD};
use crate::kit::stack::{failed_with_stderr, refused_at_once, step, succeeded, succeeded_with, Mode, Stack};
use crate::ldap::{GROUPS, PEOPLE};

const DENIED: &str = "denied: requested access to the resource is denied";

/// `@devs` is the directory's group (alice and frank; alice is also in the htpasswd file, which
/// decides her logins); every user pushes under its own name, a GitHub Actions job under
/// `github/<owner>/<repository>/` (the issuer's `username_prefix` is `github/`).
const RULES: &str = r#"
grant push on (path =^ "/v2/devs/") to @devs
grant push on (path =^ "/v2/${user}/") to authenticated
"#;

#[test]
fn docker_logs_in_with_ldap_and_jwt_credentials() -> Result<()> {
    let slapd = crate::ldap::start();
    let key = SigningKey::rsa("gh-1");
    let jwks_server = JwksServer::start(&jwks(&[&key.jwk]));
    let sections = format!(
        "[ldap]\nurl = {:?}\nbind_dn = {SERVICE_DN:?}\nbind_password_file = \"ldap.password\"\n\
         user_base = {PEOPLE:?}\ngroup_base = {GROUPS:?}\n\n\
         [[oidc]]\nissuer = {GITHUB:?}\naudience = {AUDIENCE:?}\njwks_url = {:?}\n\
         username_claim = \"repository\"\nusername_prefix = \"github/\"\n",
        slapd.url(),
        jwks_server.url()
    );
    let password_file = format!("{SERVICE_PASSWORD}\n");
    let files = [("ldap.password", password_file.as_str())];
    let basic = step("start a basic-mode stack with [ldap] and [[oidc]]", || {
        Stack::start_with_config(Mode::Basic, RULES, &sections, &files)
    })?;
    let token = step("start a token-mode stack with [ldap] and [[oidc]]", || {
        Stack::start_with_config(Mode::Token, RULES, &sections, &files)
    })?;
    let dockerd = step("start dockerd", || Dockerd::start(basic.nginx.addr()))?;

    for stack in [&basic, &token] {
        let mode = stack.mode;
        let frank = dockerd.new_client()?;
        step(&format!("[{mode}] frank (LDAP) logs in"), || {
            succeeded_with(frank.login(stack.nginx.addr(), "frank", "frank-pw")?, "Login Succeeded")
        })?;
        let image = stack.image("devs/app:1");
        dockerd.import_tiny_image(&image, &format!("frank's push ({mode})\n"))?;
        step(
            &format!("[{mode}] frank pushes to devs/app (directory group devs)"),
            || {
                succeeded(frank.run(&["push", &image])?)?;
                ensure!(
                    stack.registry_has_manifest("devs/app", "1")?,
                    "no manifest after the push"
                );
                Ok(())
            },
        )?;
        step(&format!("[{mode}] frank pulls devs/app"), || {
            succeeded(frank.run(&["rmi", &image])?)?;
            succeeded(frank.run(&["pull", &image])?)
        })?;

        let erin = dockerd.new_client()?;
        step(&format!("[{mode}] erin (LDAP, not in devs) logs in"), || {
            succeeded_with(erin.login(stack.nginx.addr(), "erin", "erin-pw")?, "Login Succeeded")
        })?;
        let refused = stack.image("devs/app:erin");
        dockerd.import_tiny_image(&refused, &format!("erin's refused push ({mode})\n"))?;
        step(&format!("[{mode}] erin's push to devs/app is refused at once"), || {
            failed_with_stderr(refused_at_once(erin.run(&["push", &refused])?)?, DENIED)?;
            ensure!(
                !stack.registry_has_manifest("devs/app", "erin")?,
                "the refused push left a manifest"
            );
            Ok(())
        })?;

        let ci = dockerd.new_client()?;
        let jwt = key.sign(&github_claims("octo-org/app"));
        step(
            &format!("[{mode}] docker login with a GitHub Actions JWT as the password"),
            || succeeded_with(ci.login(stack.nginx.addr(), "x", &jwt)?, "Login Succeeded"),
        )?;
        let ci_image = stack.image("github/octo-org/app/build:1");
        dockerd.import_tiny_image(&ci_image, &format!("CI push ({mode})\n"))?;
        step(
            &format!("[{mode}] the JWT's repository pushes under its own name"),
            || {
                succeeded(ci.run(&["push", &ci_image])?)?;
                ensure!(
                    stack.registry_has_manifest("github/octo-org/app/build", "1")?,
                    "no manifest after the push"
                );
                Ok(())
            },
        )?;
        let other = stack.image("github/octo-org/other/build:1");
        dockerd.import_tiny_image(&other, &format!("CI push elsewhere ({mode})\n"))?;
        step(
            &format!("[{mode}] the JWT's repository cannot push under another's name"),
            || {
                failed_with_stderr(refused_at_once(ci.run(&["push", &other])?)?, DENIED)?;
                Ok(())
            },
        )?;
        with_skopeo_and_podman(stack, &jwt)?;
    }
    Ok(())
}

/// The same logins with skopeo (podman shares its auth file): frank (LDAP) pushes to devs/ with
/// both, erin (LDAP, not in devs) is refused, the JWT pushes under its repository's name only.
fn with_skopeo_and_podman(stack: &Stack, jwt: &str) -> Result<()> {
    let mode = stack.mode;
    let expect = Expected { stack };
    let frank = step(&format!("[{mode}] skopeo login as frank (LDAP)"), || {
        Tools::login_with(stack, "frank", "frank-pw")
    })?;
    step(&format!("[{mode}] frank pushes devs/tools with skopeo"), || {
        succeeded(frank.skopeo_push("devs/tools:skopeo", &format!("frank skopeo ({mode})\n"))?)
    })?;
    step(&format!("[{mode}] frank pushes devs/tools with podman"), || {
        succeeded(frank.podman_push("devs/tools:podman", &format!("frank podman ({mode})\n"))?)
    })?;
    ensure!(stack.registry_has_manifest("devs/tools", "skopeo")?);
    ensure!(stack.registry_has_manifest("devs/tools", "podman")?);

    let erin = step(&format!("[{mode}] skopeo login as erin (LDAP, not in devs)"), || {
        Tools::login_with(stack, "erin", "erin-pw")
    })?;
    step(&format!("[{mode}] erin cannot push to devs/tools with skopeo"), || {
        push_refused(
            erin.skopeo_push("devs/tools:erin", &format!("erin skopeo ({mode})\n"))?,
            &skopeo_quoted(&expect.blob_check_refused("devs/tools")),
        )
    })?;
    ensure!(!stack.registry_has_manifest("devs/tools", "erin")?);

    let ci = step(&format!("[{mode}] skopeo login with the GitHub Actions JWT"), || {
        Tools::login_with(stack, "x", jwt)
    })?;
    step(
        &format!("[{mode}] the JWT pushes under its repository's name with podman"),
        || succeeded(ci.podman_push("github/octo-org/app/tools:podman", &format!("CI podman ({mode})\n"))?),
    )?;
    ensure!(stack.registry_has_manifest("github/octo-org/app/tools", "podman")?);
    step(
        &format!("[{mode}] the JWT cannot push under another's name with skopeo"),
        || {
            push_refused(
                ci.skopeo_push(
                    "github/octo-org/other/tools:skopeo",
                    &format!("CI elsewhere ({mode})\n"),
                )?,
                &skopeo_quoted(&expect.blob_check_refused("github/octo-org/other/tools")),
            )
        },
    )?;
    Ok(())
}
