//! A real OpenLDAP server for tests: Debian's `slapd` on 127.0.0.1, with its own config file,
//! database directory, CA and server certificate (made with the `openssl` CLI), loaded with an
//! LDIF through `ldapadd` so that the memberOf overlay fills `memberOf` as it does in
//! production.
//!
//! Include it with `#[path = "ldap/slapd.rs"] mod slapd;`. The server is stopped when the
//! guard is dropped; if the test is panicking, its log is printed first. Readiness is a polled
//! condition with a deadline, never a fixed sleep.
//!
//! Programs and their Debian packages: slapd (slapd), ldapadd and ldapmodify (ldap-utils),
//! openssl (openssl).

#![allow(dead_code)]

use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
const ROOT_PASSWORD: &str = "admin-secret";
pub const SERVICE_DN: &str = "cn=csel-auth,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "service-secret";

const SLAPD: &str = "/usr/sbin/slapd";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 80;

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;
const PR_SET_PDEATHSIG: i32 = 1;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

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
    dir: tempfile::TempDir,
    pub ldap_port: u16,
    pub ldaps_port: u16,
    child: Option<Child>,
}

impl Slapd {
    /// Starts slapd on free ports and loads the base tree and `data` (LDIF, users before the
    /// groups that list them, groups before the groups that contain them).
    pub fn start(data: &str) -> Result<Slapd> {
        for program in [SLAPD, "ldapadd", "ldapmodify", "openssl"] {
            if find_program(program).is_none() {
                bail!("{program} is missing: run scripts/install-test-deps (packages slapd, ldap-utils, openssl)");
            }
        }
        let dir = tempfile::Builder::new().prefix("csel-auth-slapd-").tempdir()?;
        fs::create_dir(dir.path().join("db"))?;
        make_certificates(dir.path())?;
        fs::write(dir.path().join("slapd.conf"), slapd_conf(dir.path()))?;
        let mut slapd = Slapd {
            dir,
            ldap_port: 0,
            ldaps_port: 0,
            child: None,
        };
        // A port found free can be taken before slapd binds it: try again with others.
        let mut attempt = 0;
        loop {
            slapd.ldap_port = pick_port()?;
            slapd.ldaps_port = pick_port()?;
            let log_start = slapd.log().len();
            match slapd.spawn_and_wait() {
                Ok(()) => break,
                Err(_) if attempt < 4 && slapd.port_was_taken(log_start) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
        slapd.ldap("ldapadd", BASE_LDIF)?;
        if !data.trim().is_empty() {
            slapd.ldap("ldapadd", data)?;
        }
        Ok(slapd)
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
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing this server shows.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Applies LDIF changes as the directory's administrator (`ldapmodify`).
    pub fn modify(&self, ldif: &str) -> Result<()> {
        self.ldap("ldapmodify", ldif)
    }

    /// Adds entries as the directory's administrator (`ldapadd`).
    pub fn add(&self, ldif: &str) -> Result<()> {
        self.ldap("ldapadd", ldif)
    }

    /// Whether the server accepts a simple bind as `dn` with `password` (`ldapwhoami`);
    /// an empty password makes an unauthenticated bind.
    pub fn accepts_bind(&self, dn: &str, password: &str) -> Result<bool> {
        let mut command = Command::new("ldapwhoami");
        command.args(["-x", "-H", &self.url(), "-D", dn]);
        if !password.is_empty() {
            command.args(["-w", password]);
        }
        let output = command.stdin(Stdio::null()).output().context("running ldapwhoami")?;
        Ok(output.status.success())
    }

    /// Stops the server (SIGTERM, then SIGKILL after a deadline) and waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(child.id(), SIGCONT)?;
        signal(child.id(), SIGTERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                signal(child.id(), SIGKILL)?;
                child.wait()?;
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same ports with the same database.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log_start = self.log().len();
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                // The old sockets may still hold the port for a moment.
                Err(_) if self.port_was_taken(log_start) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) -> Result<()> {
        signal(self.pid().ok_or_else(|| anyhow!("slapd is not running"))?, SIGSTOP)
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        signal(self.pid().ok_or_else(|| anyhow!("slapd is not running"))?, SIGCONT)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// Whether slapd's output since `log_start` says a port was in use.
    fn port_was_taken(&self, log_start: usize) -> bool {
        self.log().get(log_start..).is_some_and(|new| new.contains("errno=98"))
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(self.log_path())?;
        let urls = format!(
            "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
            self.ldap_port, self.ldaps_port
        );
        let mut command = Command::new(SLAPD);
        // -d keeps slapd in the foreground; 256 logs every connection and operation.
        command
            .args(["-d", "256", "-h", &urls, "-f"])
            .arg(self.dir.path().join("slapd.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child gets SIGKILL if this thread dies, so a
        // killed test run leaves no server behind.
        unsafe {
            command.pre_exec(|| {
                prctl(PR_SET_PDEATHSIG, SIGKILL as u64, 0, 0, 0);
                Ok(())
            });
        }
        let child = command.spawn().context("starting slapd")?;
        self.child = Some(child);
        let address = SocketAddr::from(([127, 0, 0, 1], self.ldap_port));
        let tls_address = SocketAddr::from(([127, 0, 0, 1], self.ldaps_port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answering = [address, tls_address]
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok());
            if answering {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("slapd exited ({status}) before answering\n{}", self.log_tail());
                }
            }
            if Instant::now() >= deadline {
                bail!("slapd did not answer within {START_TIMEOUT:?}\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn ldap(&self, program: &str, ldif: &str) -> Result<()> {
        let file = self.dir.path().join("change.ldif");
        fs::write(&file, ldif)?;
        let output = Command::new(program)
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

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!("--- slapd log (last lines) ---\n{}", lines[start..].join("\n"))
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
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

/// A CA, a server certificate it signs for 127.0.0.1 and localhost, and an unrelated CA.
fn make_certificates(dir: &Path) -> Result<()> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca_extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    for (name, subject) in [("ca", "/CN=csel-auth test CA"), ("other-ca", "/CN=unrelated test CA")] {
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
        args.extend(ec);
        args.extend(ca_extensions);
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        args.extend(["-keyout", &key, "-out", &pem]);
        openssl(dir, &args)?;
    }
    let mut args = vec![
        "req",
        "-new",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(dir, &args)?;
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    )
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A port below the kernel's ephemeral range (where outgoing connections would collide with
/// it), free a moment ago.
fn pick_port() -> Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut candidate = seed ^ std::process::id().rotate_left(16);
    for _ in 0..200 {
        // xorshift: spreads tries over the range without a rand dependency in the kit.
        candidate ^= candidate << 13;
        candidate ^= candidate >> 17;
        candidate ^= candidate << 5;
        let port = 20_000 + (candidate % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found on 127.0.0.1 between 20000 and 32000")
}

fn signal(pid: u32, signal: i32) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    if pid <= 1 {
        bail!("refusing to signal pid {pid}");
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 1 is a child of this process.
    if unsafe { kill(pid, signal) } != 0 {
        bail!("kill({pid}, {signal}): {}", io::Error::last_os_error());
    }
    Ok(())
}

fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
}
