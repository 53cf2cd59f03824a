//! A real OpenLDAP server: Debian's `slapd` on 127.0.0.1, with its own config file, database
//! directory, CA and server certificate (made with the `openssl` CLI), loaded with an LDIF
//! through `ldapadd` so that the memberOf overlay fills `memberOf` as it does in production.
//!
//! The server is stopped when the guard is dropped; if the test is panicking, its log is printed
//! first. Readiness is a polled condition with a deadline, never a fixed sleep.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::files::TestDir;
use super::ports::free_port;
use super::process::{port_in_use, require_program, start_on_free_port, ProcessGuard, Signal, Started};
use super::wait::wait_until;

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
const ROOT_PASSWORD: &str = "admin-secret";
pub const SERVICE_DN: &str = "cn=csel-auth,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "service-secret";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The base of the tree, the service account and the two branches; tests add their entries.
const BASE_LDIF: &str = "\
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: cn=csel-auth,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: csel-auth
userPassword: service-secret

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups
";

/// A running slapd and everything it needs; dropping it stops the server.
pub struct Slapd {
    // Dropped before its directory.
    process: Option<ProcessGuard>,
    dir: TestDir,
    slapd: PathBuf,
    pub ldap_port: u16,
    pub ldaps_port: u16,
}

impl Slapd {
    /// Starts slapd on free ports and loads the base tree and `data` (LDIF, users before the
    /// groups that list them, groups before the groups that contain them).
    pub fn start(data: &str) -> Result<Slapd> {
        let slapd = require_program("slapd")?;
        for program in ["ldapadd", "ldapmodify", "openssl"] {
            require_program(program)?;
        }
        let dir = TestDir::new("slapd")?;
        dir.mkdir("db")?;
        super::tls::make_certificates(dir.path())?;
        dir.write("slapd.conf", slapd_conf(dir.path()))?;
        let mut server = Slapd {
            process: None,
            dir,
            slapd,
            ldap_port: 0,
            ldaps_port: 0,
        };
        start_on_free_port("slapd", || {
            server.ldap_port = free_port();
            server.ldaps_port = free_port();
            server.spawn_and_wait()
        })?;
        server.ldap("ldapadd", BASE_LDIF)?;
        if !data.trim().is_empty() {
            server.ldap("ldapadd", data)?;
        }
        Ok(server)
    }

    /// `ldap://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// `ldaps://127.0.0.1:PORT`
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// The CA that signed the server's certificate (for 127.0.0.1 and localhost).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing this server shows.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// Applies LDIF changes as the directory's administrator (`ldapmodify`).
    pub fn modify(&self, ldif: &str) -> Result<()> {
        self.ldap("ldapmodify", ldif)
    }

    /// Whether the server accepts a simple bind as `dn` with `password` (`ldapwhoami`); an empty
    /// password makes an unauthenticated bind.
    pub fn accepts_bind(&self, dn: &str, password: &str) -> Result<bool> {
        let mut command = Command::new(require_program("ldapwhoami")?);
        command.args(["-x", "-H", &self.url(), "-D", dn]);
        if !password.is_empty() {
            command.args(["-w", password]);
        }
        let output = command.stdin(Stdio::null()).output().context("running ldapwhoami")?;
        Ok(output.status.success())
    }

    /// Stops the server (SIGTERM, then SIGKILL after a deadline) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts the server again on the same ports with the same database.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        // The old sockets may still hold the ports for a moment.
        let mut last = String::new();
        wait_until(START_TIMEOUT, "slapd to start again on its ports", || {
            match self.spawn_and_wait() {
                Ok(Started::Ready(())) => Some(Ok(())),
                Ok(Started::PortTaken(log)) => {
                    last = log;
                    None
                }
                Err(error) => Some(Err(error)),
            }
        })
        .map_err(|timed_out| anyhow!("{timed_out}\n{last}"))?
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) -> Result<()> {
        self.running()?.pause()
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.running()?.resume()
    }

    fn running(&self) -> Result<&ProcessGuard> {
        self.process.as_ref().ok_or_else(|| anyhow!("slapd is not running"))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> Result<Started<()>> {
        let urls = format!(
            "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
            self.ldap_port, self.ldaps_port
        );
        let mut command = Command::new(&self.slapd);
        // -d keeps slapd in the foreground; 256 logs every connection and operation.
        command
            .args(["-d", "256", "-h", &urls, "-f"])
            .arg(self.dir.join("slapd.conf"));
        let log_start = self.log().len();
        let mut process = ProcessGuard::spawn("slapd", command, &self.dir.join("slapd.log"), Signal::SIGKILL)?;
        let addresses = [self.ldap_port, self.ldaps_port].map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let ready = process.wait_ready("slapd to answer on both ports", START_TIMEOUT, || {
            addresses
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
        });
        match ready {
            Ok(()) => {
                self.process = Some(process);
                Ok(Started::Ready(()))
            }
            Err(error) => {
                process.kill();
                let new = self.log().get(log_start..).unwrap_or_default().to_string();
                if port_in_use(&new) {
                    Ok(Started::PortTaken(format!("{error:#}")))
                } else {
                    Err(error)
                }
            }
        }
    }

    fn ldap(&self, program: &str, ldif: &str) -> Result<()> {
        let file = self.dir.write("change.ldif", ldif)?;
        let output = Command::new(require_program(program)?)
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PASSWORD, "-f"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}):\n{}{}\nLDIF:\n{ldif}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

fn slapd_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload refint
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
# Like many directories in the field: a DN with an empty password binds as anonymous and
# succeeds. The client must never send one.
allow bind_anon_dn
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key

database mdb
maxsize 67108864
suffix \"{SUFFIX}\"
rootdn \"{ROOT_DN}\"
rootpw {ROOT_PASSWORD}
directory {d}/db

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

# Passwords are only for binding; only the service account reads entries, so anonymous
# searches find nothing and a bound user cannot search either.
access to attrs=userPassword
  by anonymous auth
  by * none
access to *
  by dn.exact=\"{SERVICE_DN}\" read
  by * none
"
    )
}
