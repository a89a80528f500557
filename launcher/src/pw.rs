//! A libpipewire client on its own thread. libpipewire objects are single-threaded (`!Send`),
//! so each client owns a thread with a main loop; the rest of pixelpass talks to it through
//! channels. Stopping (or dropping) the handle quits the loop and disconnects, and PipeWire
//! destroys every object the client created: nothing outlives us, even after a crash.

use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, anyhow};
use pipewire as pw;
use pw::properties::properties;

/// What a client's setup gets: the loop, the connection and the registry.
pub struct Conn {
    pub main_loop: pw::main_loop::MainLoopRc,
    pub core: pw::core::CoreRc,
    pub registry: pw::registry::RegistryRc,
}

impl Conn {
    /// Runs `then` once the server has processed everything sent so far (a roundtrip).
    pub fn after_roundtrip(&self, then: impl Fn() + 'static) -> Result<pw::core::Listener> {
        let seq = self.core.sync(0).map_err(|e| anyhow!("PipeWire sync failed: {e}"))?;
        Ok(self
            .core
            .add_listener_local()
            .done(move |id, s| {
                if id == pw::core::PW_ID_CORE && s == seq {
                    then();
                }
            })
            .register())
    }
}

/// A running client thread.
pub struct Client {
    stop: Option<pw::channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// Connects (to `fd` when given, e.g. a portal's restricted remote, else to the user's
    /// PipeWire) and runs `setup` on the new thread. `setup` returns the state to keep alive
    /// while the loop runs; it may signal readiness itself. Fails when PipeWire is unreachable.
    pub fn spawn<S: 'static>(
        name: &str,
        fd: Option<OwnedFd>,
        setup: impl FnOnce(&Conn) -> Result<S> + Send + 'static,
    ) -> Result<Client> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<pw::channel::Sender<()>, String>>();
        let thread = std::thread::Builder::new().name(format!("pw-{name}")).spawn(move || {
            pw::init();
            let run = || -> Result<()> {
                let main_loop = pw::main_loop::MainLoopRc::new(None)?;
                let context = pw::context::ContextRc::new(&main_loop, None)?;
                let props = properties! { "application.name" => "pixelpass" };
                let core = match fd {
                    Some(fd) => context.connect_fd_rc(fd, Some(props)),
                    None => context.connect_rc(Some(props)),
                }
                .map_err(|_| anyhow!("cannot connect to PipeWire (is the pipewire service running?)"))?;
                let registry = core.get_registry_rc()?;
                // A lost connection (the daemon went away) ends the loop.
                let weak = main_loop.downgrade();
                let _core_listener = core
                    .add_listener_local()
                    .error(move |id, _seq, _res, _msg| {
                        if id == pw::core::PW_ID_CORE
                            && let Some(l) = weak.upgrade()
                        {
                            l.quit();
                        }
                    })
                    .register();
                let conn = Conn {
                    main_loop,
                    core,
                    registry,
                };
                let state = setup(&conn)?;
                let (stop_tx, stop_rx) = pw::channel::channel::<()>();
                let weak = conn.main_loop.downgrade();
                let _stop = stop_rx.attach(conn.main_loop.loop_(), move |()| {
                    if let Some(l) = weak.upgrade() {
                        l.quit();
                    }
                });
                let _ = ready_tx.send(Ok(stop_tx));
                conn.main_loop.run();
                drop(state);
                Ok(())
            };
            if let Err(e) = run() {
                let _ = ready_tx.send(Err(format!("{e:#}")));
            }
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(stop)) => Ok(Client {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(anyhow!(e))
            }
            Err(_) => Err(anyhow!("PipeWire did not answer within 5 s")),
        }
    }

    /// Quits the loop, disconnects and waits for the thread.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A string property of a registry global.
pub fn prop<'a>(obj: &'a pw::registry::GlobalObject<&pw::spa::utils::dict::DictRef>, key: &str) -> Option<&'a str> {
    obj.props.and_then(|p| p.get(key))
}
