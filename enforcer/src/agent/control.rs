//! The operator socket: a Unix stream socket the agent serves (default
//! [`DEFAULT_SOCKET`], mode 0600 in a 0700 directory: root only), one JSON request line in, one
//! JSON response line out, then the connection closes. `enforcer status`, `flows`, `top`, `block`,
//! `unblock`, `reload` and `cbom` are its clients. Protocol: docs/operations.md, "Operator socket".

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
};
use tracing::warn;

pub const DEFAULT_SOCKET: &str = "/run/enforcer/agent.sock";
const MAX_REQUEST: u64 = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A request, as the JSON object `{"cmd": "...", ...}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// What is attached, the hook form, the counters.
    Status,
    /// Every attributed flow with its library and verdict.
    Flows,
    /// Block one connection: blocklist + socket abort.
    Block {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// Take one connection out of the blocklist; it stays allowed.
    Unblock {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// Reload the policy file (as SIGHUP does), and say how it went.
    Reload,
    /// Read only: connections reported since start by library and verdict, and the newest
    /// violations (what `enforcer top` shows).
    Recent,
    /// Read only: the host's live TLS use as a CycloneDX 1.7 CBOM (`enforcer cbom`).
    Cbom,
}

/// Answers requests: implemented by the running agent.
pub type Handler = Arc<dyn Fn(Request) -> futures::future::BoxFuture<'static, Value> + Send + Sync>;

/// Binds the socket. A socket file left by a dead agent is replaced; one a live agent answers on
/// is an error (two agents would fight over the interfaces anyway).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another agent is serving this control socket; stop it or pass --control-socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Serves until dropped; then the caller removes the socket file.
pub async fn serve(listener: UnixListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader =
                tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
            let got = tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await;
            let response = match got {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                    Ok(request) => handler(request).await,
                    Err(err) => json!({"ok": false, "error": format!("bad request: {err}")}),
                },
                _ => return,
            };
            let mut text = response.to_string();
            text.push('\n');
            if let Err(err) = write.write_all(text.as_bytes()).await {
                warn!(%err, "control socket: writing the response failed");
            }
        });
    }
}

/// Client side: sends `request` to the agent at `socket`, returns its answer. An answer with
/// `"ok": false` becomes an error carrying the agent's message.
pub fn request(socket: &Path, request: &Request) -> Result<Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent at {} (is `enforcer attach` running, with this --control-socket? are you root?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream.take_reader())
        .read_line(&mut answer)
        .context("reading the agent's answer")?;
    let value: Value = serde_json::from_str(answer.trim())
        .with_context(|| format!("the agent's answer is not JSON: {answer:?}"))?;
    if value["ok"] != true {
        bail!(
            "the agent refused: {}",
            value["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(value)
}

trait TakeReader {
    fn take_reader(self) -> std::io::Take<UnixStream>;
}

impl TakeReader for UnixStream {
    fn take_reader(self) -> std::io::Take<UnixStream> {
        std::io::Read::take(self, 16 * 1024 * 1024)
    }
}

/// The socket path for the client commands: `--socket`, else the default.
pub fn socket_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// `enforcer status` in text.
pub fn status_text(v: &Value) -> String {
    let mut out = String::new();
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    out.push_str(&format!(
        "agent pid {} up {} s, mode {}, policy {}\n",
        v["pid"],
        v["uptime_s"],
        s("mode"),
        s("policy")
    ));
    out.push_str(&format!(
        "kernel hook: {} (targets {})\n",
        s("kernel_hook"),
        v["kernel_hook_targets"]
    ));
    let ingress = v["attached"]["ingress"].as_object().map(|forms| {
        let each = forms
            .iter()
            .map(|(name, form)| format!("{name}: {}", form.as_str().unwrap_or("?")));
        each.collect::<Vec<_>>().join(", ")
    });
    out.push_str(&format!(
        "interfaces: {} (ingress {}; egress tc)\n",
        v["interfaces"],
        ingress.unwrap_or_default()
    ));
    for layer in v["layers"]["hooks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {} ({}): sees {}\n",
            layer["interface"].as_str().unwrap_or("?"),
            layer["hook"].as_str().unwrap_or("?"),
            layer["form"].as_str().unwrap_or("?"),
            layer["sees"].as_str().unwrap_or("?")
        ));
    }
    if let Some(form) = v["layers"]["host"]["form"].as_str() {
        out.push_str(&format!(
            "  host layer: {form}: sees {}\n",
            v["layers"]["host"]["sees"].as_str().unwrap_or("?")
        ));
    }
    if let Some(not) = v["layers"]["not_filtered"].as_str() {
        out.push_str(&format!("  not filtered: {not}\n"));
    }
    out.push_str(&format!(
        "libraries probed: {}, new files: {}\n",
        v["libraries"], v["new_files"]
    ));
    let ids = &v["library_ids"];
    out.push_str(&format!(
        "library ids: {} / {} (per user {}), over capacity {}, released {}\n",
        ids["used"], ids["max"], ids["per_user"], ids["over_capacity"], ids["released"]
    ));
    out.push_str(&format!(
        "pinned: {}\n",
        v["pin"]
            .as_str()
            .unwrap_or("no (everything goes when the agent exits)")
    ));
    let c = &v["counters"];
    out.push_str(&format!(
        "flows {} / {}, blocklist {} / {}, overflow {} / {}\n",
        v["maps"]["flows"],
        v["maps"]["flows_max"],
        v["maps"]["blocklist"],
        v["maps"]["blocklist_max"],
        v["maps"]["overflow"],
        v["maps"]["overflow_max"]
    ));
    out.push_str(&format!(
        "drops: xdp {}, tc {}, tc ingress {}, host layer {} ({} while busy); flows attributed {}; events lost: connections {}, hellos {}; blocklist full {}\n",
        c["xdp_drops"],
        c["tc_drops"],
        c["tc_ingress_drops"],
        c["cgroup_drops"],
        c["host_nested_drops"],
        c["flows_attributed"],
        c["events_lost"],
        c["hello_events_lost"],
        c["blocklist_full"]
    ));
    out.push_str(&format!(
        "client hellos: {} ({} unattributed), dropped {}; TLS stack overflows {}; socket read failures {}\n",
        c["client_hellos"],
        c["unattributed_hellos"],
        c["client_hello_drops"],
        c["tls_stack_overflow"],
        c["sock_read_failures"]
    ));
    out.push_str(&format!(
        "hello randoms: recorded {}, unreadable {}; hellos attributed by random {}, split {}\n",
        c["randoms_recorded"], c["randoms_unreadable"], c["hellos_by_random"], c["hellos_split"]
    ));
    let n = &v["negotiated"];
    let versions = n["by_version"].as_object().map(|by| {
        let each = by
            .iter()
            .map(|(name, count)| format!("TLS {name}: {count}"));
        each.collect::<Vec<_>>().join(", ")
    });
    out.push_str(&format!(
        "negotiated: {} connections ({}), post-quantum groups {}; ServerHellos held for a JA4 verdict {}\n",
        n["connections"],
        versions.unwrap_or_default(),
        n["post_quantum"],
        c["server_hellos_held"]
    ));
    out
}

/// `enforcer flows` in text: one line per flow.
pub fn flows_text(v: &Value) -> String {
    let mut out = format!(
        "{:<46} {:<46} {:<10} {:<16} {:<7} {:<22} {}\n",
        "LOCAL", "REMOTE", "LIBRARY", "VERDICT", "BLOCKED", "TLS", "JA4"
    );
    for f in v["flows"].as_array().into_iter().flatten() {
        let tls = &f["tls"];
        let tls = match tls["version"].as_str() {
            Some(version) => format!("{version} {}", tls["group"].as_str().unwrap_or("-")),
            None if tls.is_object() => "unread".to_owned(),
            None => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<46} {:<46} {:<10} {:<16} {:<7} {tls:<22} {}\n",
            f["local"].as_str().unwrap_or("?"),
            f["remote"].as_str().unwrap_or("?"),
            f["library"]["family"].as_str().unwrap_or("?"),
            f["verdict"].as_str().unwrap_or("?"),
            f["blocked"],
            f["ja4"].as_str().unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_shows_every_counter() {
        let counters: serde_json::Map<String, Value> = enforcer_common::stat::ALL
            .iter()
            .map(|c| (c.shown().name.to_owned(), Value::from(1000 + *c as u64)))
            .collect();
        let text = status_text(&serde_json::json!({ "counters": counters }));
        for c in enforcer_common::stat::ALL {
            let value = (1000 + c as u64).to_string();
            assert!(text.contains(&value), "{c:?} ({value}) missing:\n{text}");
        }
    }

    #[test]
    fn requests_are_tagged_json() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"block","local":"10.0.0.1:4000","remote":"[fd00::2]:443"}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::Block { local, .. } if local.port() == 4000));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"cmd":"recent"}"#).unwrap(),
            Request::Recent
        ));
        assert_eq!(
            serde_json::to_string(&Request::Flows).unwrap(),
            r#"{"cmd":"flows"}"#
        );
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"cmd":"cbom"}"#).unwrap(),
            Request::Cbom
        ));
    }
}
