//! Per-app audio: `--app NAME` shares only the sound of matching apps, `--exclude-app NAME`
//! everything but them.
//!
//! How: a private null sink `pixelpass_capture_<pid>` (a PipeWire node owned by our client, so
//! PipeWire removes it when we exit, a crash included) and extra links from the output ports of
//! every matching `Stream/Output/Audio` node into it, made as apps appear (also apps that start
//! later). The capture reads the sink's monitor. The apps keep playing where they played before
//! — nothing in the user's routing changes, so the host still hears them and there is nothing
//! to restore.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use pipewire as pw;
use pw::properties::properties;

use super::repair::SINK_PREFIX;
use crate::pw::{Client, Conn, prop};

/// Which playing streams to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// only streams of these apps
    Only(Vec<String>),
    /// every stream but those of these apps
    Except(Vec<String>),
}

/// An app as PipeWire names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct App {
    /// `application.name` (e.g. "Firefox")
    pub name: String,
    /// `application.process.binary` (e.g. "firefox")
    pub binary: String,
}

impl App {
    fn of(obj: &pw::registry::GlobalObject<&pw::spa::utils::dict::DictRef>) -> App {
        App {
            name: prop(obj, "application.name").unwrap_or("").to_string(),
            binary: prop(obj, "application.process.binary").unwrap_or("").to_string(),
        }
    }

    /// Matches a user-given name against `application.name` or the binary, ignoring case.
    pub fn is(&self, wanted: &str) -> bool {
        let w = wanted.trim();
        !w.is_empty() && (self.name.eq_ignore_ascii_case(w) || self.binary.eq_ignore_ascii_case(w))
    }

    /// pixelpass's own streams: never shared back into the capture, never listed.
    fn is_ours(&self) -> bool {
        self.name == "pixelpass"
    }

    /// How people see it: the name, else the binary.
    pub fn label(&self) -> &str {
        if self.name.is_empty() { &self.binary } else { &self.name }
    }
}

impl Rule {
    /// Whether a stream of `app` is shared. Our own streams (the capture itself) never are.
    pub fn shares(&self, app: &App) -> bool {
        if app.is_ours() {
            return false;
        }
        match self {
            Rule::Only(names) => names.iter().any(|n| app.is(n)),
            Rule::Except(names) => !names.iter().any(|n| app.is(n)),
        }
    }

    /// For messages: "the sound of firefox" / "all sound except discord".
    pub fn describe(&self) -> String {
        match self {
            Rule::Only(n) => format!("the sound of {}", n.join(", ")),
            Rule::Except(n) => format!("all sound except {}", n.join(", ")),
        }
    }
}

/// The sink's name for this process.
pub fn sink_name() -> String {
    format!("{SINK_PREFIX}{}", std::process::id())
}

/// Which input channels of our stereo sink a port of `channel` feeds.
fn sink_channels(channel: &str) -> &'static [&'static str] {
    match channel {
        "FL" | "SL" | "RL" | "FLC" => &["FL"],
        "FR" | "SR" | "RR" | "FRC" => &["FR"],
        "LFE" => &[],
        _ => &["FL", "FR"], // MONO, FC, unknown
    }
}

/// The apps playing sound right now (one entry per app).
pub fn playing() -> Result<Vec<App>> {
    let (tx, rx) = mpsc::channel();
    let mut client = Client::spawn("list", None, move |c: &Conn| {
        let found = Rc::new(RefCell::new(Vec::<App>::new()));
        let f = found.clone();
        let reg = c
            .registry
            .add_listener_local()
            .global(move |obj| {
                if prop(obj, "media.class") == Some("Stream/Output/Audio") {
                    let app = App::of(obj);
                    let mut f = f.borrow_mut();
                    if !f.contains(&app) && !app.is_ours() {
                        f.push(app);
                    }
                }
            })
            .register();
        let done = c.after_roundtrip(move || {
            let _ = tx.send(found.borrow().clone());
        })?;
        Ok((reg, done))
    })?;
    let apps = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("PipeWire did not list its streams within 5 s"));
    client.stop();
    apps
}

/// A running per-app capture: the sink exists and matching apps are linked into it while this
/// lives. Dropping it removes the sink and the links.
pub struct AppAudio {
    _client: Client,
}

impl AppAudio {
    /// Creates the sink and starts linking; returns once the sink is usable.
    pub fn start(rule: Rule) -> Result<AppAudio> {
        let sink = sink_name();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let name = sink.clone();
        let client = Client::spawn("apps", None, move |c: &Conn| {
            let node: pw::node::Node = c
                .core
                .create_object(
                    "adapter",
                    &properties! {
                        "factory.name" => "support.null-audio-sink",
                        "node.name" => name.as_str(),
                        "node.description" => "pixelpass capture",
                        "media.class" => "Audio/Sink",
                        "audio.position" => "FL,FR",
                        "object.linger" => "false",
                        "priority.session" => "0",
                        "priority.driver" => "0",
                        "node.virtual" => "true",
                    },
                )
                .map_err(|e| anyhow!("cannot create the capture sink: {e}"))?;
            let state = Rc::new(RefCell::new(Linker {
                rule,
                sink: name,
                sink_node: None,
                sink_ports: HashMap::new(),
                apps: HashSet::new(),
                out_ports: HashMap::new(),
                links: HashMap::new(),
                ready: Some(ready_tx),
                core: c.core.clone(),
            }));
            let (s1, s2) = (state.clone(), state.clone());
            let listener = c
                .registry
                .add_listener_local()
                .global(move |obj| s1.borrow_mut().global(obj))
                .global_remove(move |id| s2.borrow_mut().removed(id))
                .register();
            Ok((node, listener, state))
        })?;
        // Ready once the sink's two input ports exist (pulsesrc can then open its monitor).
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the capture sink {sink} did not appear in PipeWire within 5 s"))?;
        Ok(AppAudio { _client: client })
    }
}

/// The linking state machine, on the client thread.
struct Linker {
    rule: Rule,
    sink: String,
    sink_node: Option<u32>,
    /// our sink's input ports: channel → port id
    sink_ports: HashMap<String, u32>,
    /// shared stream nodes
    apps: HashSet<u32>,
    /// output ports of any node: port id → (node id, channel)
    out_ports: HashMap<u32, (u32, String)>,
    /// links we made: (output port, input port) → proxy
    links: HashMap<(u32, u32), pw::link::Link>,
    ready: Option<mpsc::Sender<()>>,
    core: pw::core::CoreRc,
}

impl Linker {
    fn global(&mut self, obj: &pw::registry::GlobalObject<&pw::spa::utils::dict::DictRef>) {
        match obj.type_ {
            pw::types::ObjectType::Node => {
                if prop(obj, "node.name") == Some(self.sink.as_str()) {
                    self.sink_node = Some(obj.id);
                } else if prop(obj, "media.class") == Some("Stream/Output/Audio") && self.rule.shares(&App::of(obj)) {
                    self.apps.insert(obj.id);
                }
            }
            pw::types::ObjectType::Port => {
                let (Some(node), Some(dir)) = (
                    prop(obj, "node.id").and_then(|n| n.parse::<u32>().ok()),
                    prop(obj, "port.direction"),
                ) else {
                    return;
                };
                let channel = prop(obj, "audio.channel").unwrap_or("MONO").to_string();
                if dir == "in" && Some(node) == self.sink_node {
                    self.sink_ports.insert(channel, obj.id);
                    if self.sink_ports.len() >= 2
                        && let Some(r) = self.ready.take()
                    {
                        let _ = r.send(());
                    }
                } else if dir == "out" && prop(obj, "port.monitor") != Some("true") {
                    self.out_ports.insert(obj.id, (node, channel));
                }
            }
            _ => return,
        }
        self.link_all();
    }

    fn removed(&mut self, id: u32) {
        self.apps.remove(&id);
        self.out_ports.remove(&id);
        self.sink_ports.retain(|_, p| *p != id);
        self.links.retain(|(o, i), _| *o != id && *i != id);
    }

    /// Makes every missing link from a shared app's output port into our sink.
    fn link_all(&mut self) {
        let Some(sink_node) = self.sink_node else { return };
        let mut want = Vec::new();
        for (&port, (node, channel)) in &self.out_ports {
            if !self.apps.contains(node) {
                continue;
            }
            for ch in sink_channels(channel) {
                if let Some(&input) = self.sink_ports.get(*ch)
                    && !self.links.contains_key(&(port, input))
                {
                    want.push((*node, port, input));
                }
            }
        }
        for (node, output, input) in want {
            let link = self.core.create_object::<pw::link::Link>(
                "link-factory",
                &properties! {
                    "link.output.node" => node.to_string(),
                    "link.output.port" => output.to_string(),
                    "link.input.node" => sink_node.to_string(),
                    "link.input.port" => input.to_string(),
                    "object.linger" => "false",
                },
            );
            match link {
                Ok(l) => {
                    self.links.insert((output, input), l);
                }
                Err(e) => eprintln!("pixelpass: cannot link an app into the capture sink: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, binary: &str) -> App {
        App {
            name: name.into(),
            binary: binary.into(),
        }
    }

    #[test]
    fn rules_match_name_or_binary_ignoring_case() {
        let only = Rule::Only(vec!["firefox".into()]);
        assert!(only.shares(&app("Firefox", "firefox-bin")));
        assert!(only.shares(&app("Web", "FIREFOX")));
        assert!(!only.shares(&app("Discord", "discord")));
        let except = Rule::Except(vec!["Discord".into(), "mumble".into()]);
        assert!(except.shares(&app("Firefox", "firefox")));
        assert!(!except.shares(&app("discord", "Discord")));
        assert!(!except.shares(&app("Mumble", "")));
        // our own capture stream is never shared back into itself
        assert!(!except.shares(&app("pixelpass", "pixelpass")));
        assert!(!Rule::Only(vec!["".into()]).shares(&app("", "")));
    }

    #[test]
    fn channels_map_onto_stereo() {
        assert_eq!(sink_channels("FL"), &["FL"]);
        assert_eq!(sink_channels("RR"), &["FR"]);
        assert_eq!(sink_channels("MONO"), &["FL", "FR"]);
        assert!(sink_channels("LFE").is_empty());
    }
}
