//! `kappa service systemd|launchd`: the service definition that runs
//! `kappa serve` on this database at login, printed for the user to
//! install (the README says where). The node's options come from
//! `serve.json` (`kappa serve … --save`), so the unit itself stays short.

use std::path::Path;

use anyhow::Context;

/// A service manager.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// A systemd user unit (Linux).
    Systemd,
    /// A launchd agent property list (macOS).
    Launchd,
}

/// One argument of a systemd command line, quoted if it needs to be.
fn systemd_arg(a: &str) -> String {
    if a.chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '%' | '$'))
    {
        let escaped = a
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
            .replace('$', "$$");
        format!("\"{escaped}\"")
    } else {
        a.to_string()
    }
}

/// Text for an XML element's content.
fn xml(a: &str) -> String {
    a.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The service definition for `dir`, running this very binary.
pub fn render(manager: Manager, dir: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot tell where this kappa binary is")?;
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let exe = exe.display().to_string();
    let dir = dir.display().to_string();
    let args = [exe.as_str(), "--dir", dir.as_str(), "serve"];
    Ok(match manager {
        Manager::Systemd => format!(
            "# ~/.config/systemd/user/kappadb.service\n\
             # then: systemctl --user daemon-reload && systemctl --user enable --now kappadb\n\
             [Unit]\n\
             Description=kappadb node for {dir}\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             ExecStart={cmd}\n\
             Restart=on-failure\n\
             RestartSec=5\n\
             # kappa serve stops cleanly on SIGTERM: it finishes the page it is\n\
             # storing and saves its address book.\n\
             KillSignal=SIGTERM\n\
             TimeoutStopSec=30\n\
             \n\
             [Install]\n\
             WantedBy=default.target",
            cmd = args.map(systemd_arg).join(" "),
        ),
        Manager::Launchd => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!-- ~/Library/LaunchAgents/org.kappadb.node.plist\n     \
             then: launchctl load ~/Library/LaunchAgents/org.kappadb.node.plist -->\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n\
             <dict>\n\
             \x20 <key>Label</key><string>org.kappadb.node</string>\n\
             \x20 <key>ProgramArguments</key>\n\
             \x20 <array>\n{args}\n\
             \x20 </array>\n\
             \x20 <key>RunAtLoad</key><true/>\n\
             \x20 <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>\n\
             \x20 <key>StandardErrorPath</key><string>{log}</string>\n\
             </dict>\n\
             </plist>",
            args = args
                .iter()
                .map(|a| format!("    <string>{}</string>", xml(a)))
                .collect::<Vec<_>>()
                .join("\n"),
            log = xml(&format!("{dir}/serve.log")),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_with_spaces_are_quoted_for_systemd() {
        assert_eq!(systemd_arg("/usr/bin/kappa"), "/usr/bin/kappa");
        assert_eq!(systemd_arg("/home/a b/db"), "\"/home/a b/db\"");
        assert_eq!(systemd_arg("100%"), "\"100%%\"");
        assert_eq!(xml("a<b&c"), "a&lt;b&amp;c");
    }
}
