//! The pool and the synced directory: the view every core holds (users who may authenticate, the search
//! index), what a core does when a new view arrives (people who left are refused from then on, their bindings
//! and publications end, their watchers see them offline, the subscriptions they hold end), the SIP search
//! service (`MESSAGE sip:directory@<domain>`: 200, then a MESSAGE back with the matches and their presence,
//! gathered from the cores that own them), and the thread that syncs on `interval_s` and hands out new views.
//! A search holds its permit (at most `SEARCHES_MAX` in flight) until its answer is sent; over the cap the
//! MESSAGE gets `503 Service Unavailable: directory busy` with `Retry-After: 1`, counted `directory_searches_busy`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::presence::notify::Final;
use super::users::Users;
use super::{Action, Now, PoolCore, PoolMsg};
use crate::directory::search::{self, Hit, Index, Permit, SearchError};
use crate::net::ConnId;
use crate::shard::shard_for;
use crate::sip::{self, HeaderName, Message};

/// The user part that names the search service.
pub const SERVICE: &str = "directory";
/// Branch prefix of the answers' MESSAGEs: their responses are absorbed.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKdir";
/// How long a search waits for other cores' presence states before answering with what it has.
const GATHER_TIMEOUT: Duration = Duration::from_secs(1);

/// What every core holds of the directory.
#[derive(Clone, Default)]
pub struct View {
    pub users: Arc<Users>,
    pub index: Arc<Index>,
}

/// Presence across cores for a search's answer.
#[derive(Debug)]
pub enum Msg {
    Ask { core: usize, search: u32, aors: Vec<String> },
    States { search: u32, states: Vec<(String, &'static str)> },
}

struct Pending {
    sender: String,
    query: String,
    hits: Vec<Hit>,
    states: HashMap<String, &'static str>,
    waiting: usize,
    deadline: Instant,
    _permit: Permit<'static>,
}

/// One core's directory state.
#[derive(Default)]
pub struct DirState {
    pub view: View,
    pending: HashMap<u32, Pending>,
    next: u32,
}

impl DirState {
    pub fn new(users: Users) -> DirState {
        DirState { view: View { users: Arc::new(users), index: Arc::default() }, ..Default::default() }
    }
}

fn aor_of_hit(h: &Hit) -> &str {
    h.uri.strip_prefix("sip:").unwrap_or(&h.uri)
}

/// The answer's text: one line per person.
pub fn render_answer(query: &str, hits: &[Hit], states: &HashMap<String, &'static str>) -> String {
    if hits.is_empty() {
        return format!("No one found for \"{query}\".\r\n");
    }
    let mut out = format!("{} found for \"{query}\":\r\n", hits.len());
    for h in hits {
        let state = states.get(aor_of_hit(h)).copied().unwrap_or("unknown");
        let mut line = format!("{} <{}>", h.display_name, h.uri);
        for extra in [&h.title, &h.phone] {
            if !extra.is_empty() {
                line.push_str(", ");
                line.push_str(extra);
            }
        }
        out.push_str(&format!("{line} [{state}]\r\n"));
    }
    out
}

impl PoolCore {
    /// A new directory view (after a sync): people no longer in it lose their state here.
    pub fn on_directory(&mut self, view: View, now: Now) {
        self.now = now;
        let gone = self.dir.view.users.gone_from(&view.users);
        self.dir.view = view;
        for aor in gone {
            self.end_person(&aor);
        }
    }

    fn end_person(&mut self, aor: &str) {
        let mine = shard_for(aor.as_bytes(), self.count) == self.id;
        if mine {
            if self.registrar.remove_aor(aor) > 0 {
                self.persist_bindings(aor);
            }
            if self.presence.pubs.remove_aor(aor) {
                self.persist_publications(aor);
            }
            // Watchers hear the closed state (their subscriptions stay: the person may come back).
            self.presence_registration(aor);
            self.presence_changed(aor);
        }
        // Subscriptions held *by* the person end, wherever the presentity lives.
        for id in self.presence.subs.of_watcher(aor) {
            self.send_notify(id, Some(Final::Noresource));
        }
    }

    /// Whether a request is for the search service (`directory@` one of our domains).
    pub(crate) fn is_directory_request(&self, msg: &Message) -> bool {
        msg.request_uri_parsed().is_some_and(|u| self.is_local_host(&u) && *u.user_unescaped() == *SERVICE.as_bytes())
    }

    /// A MESSAGE to the search service from an authenticated user, on that user's core (which holds their
    /// bindings, where the answer goes).
    pub(crate) fn directory_message(&mut self, origin: ConnId, msg: &Message, sender_aor: &str) {
        let text = String::from_utf8_lossy(msg.body()).trim().to_string();
        let query = match search::Query::parse(&text) {
            Ok(q) => q,
            Err(e) => {
                self.reply(origin, msg, 200, "OK", &[]);
                self.send_answer(sender_aor, &format!("{e}\r\n"));
                return;
            }
        };
        let permit = match search::LIMITER.try_enter() {
            Ok(p) => p,
            Err(SearchError::Busy) | Err(SearchError::BadQuery(_)) => {
                crate::net::conn::bump(&self.pstats.directory_searches_busy);
                self.reply(origin, msg, 503, "Service Unavailable: directory busy", &[(HeaderName::RetryAfter, b"1")]);
                return;
            }
        };
        crate::net::conn::bump(&self.pstats.directory_searches);
        self.reply(origin, msg, 200, "OK", &[]);
        let hits = self.dir.view.index.search(&query);
        let mut by_core: HashMap<usize, Vec<String>> = HashMap::new();
        let mut states = HashMap::new();
        for h in &hits {
            let aor = aor_of_hit(h).to_string();
            let core = shard_for(aor.as_bytes(), self.count);
            if core == self.id {
                let st = self.presence_state(&aor);
                states.insert(aor, st);
            } else {
                by_core.entry(core).or_default().push(aor);
            }
        }
        if by_core.is_empty() {
            self.send_answer(sender_aor, &render_answer(&text, &hits, &states));
            return;
        }
        self.dir.next = self.dir.next.wrapping_add(1);
        let id = self.dir.next;
        let waiting = by_core.len();
        for (core, aors) in by_core {
            self.push(Action::Mesh { core, msg: PoolMsg::Directory(Msg::Ask { core: self.id, search: id, aors }) });
        }
        self.dir.pending.insert(
            id,
            Pending {
                sender: sender_aor.to_string(),
                query: text,
                hits,
                states,
                waiting,
                deadline: self.now.mono + GATHER_TIMEOUT,
                _permit: permit,
            },
        );
    }

    /// Online (registered) with the best published state, else offline.
    fn presence_state(&self, aor: &str) -> &'static str {
        self.member_state(aor).label()
    }

    pub(crate) fn on_directory_msg(&mut self, m: Msg) {
        match m {
            Msg::Ask { core, search, aors } => {
                let states = aors.into_iter().map(|a| {
                    let s = self.presence_state(&a);
                    (a, s)
                });
                let states = states.collect();
                self.push(Action::Mesh { core, msg: PoolMsg::Directory(Msg::States { search, states }) });
            }
            Msg::States { search, states } => {
                let Some(p) = self.dir.pending.get_mut(&search) else { return };
                p.states.extend(states);
                p.waiting = p.waiting.saturating_sub(1);
                if p.waiting == 0 && !search::gathers_held() {
                    self.finish_search(search);
                }
            }
        }
    }

    fn finish_search(&mut self, id: u32) {
        if let Some(p) = self.dir.pending.remove(&id) {
            let text = render_answer(&p.query, &p.hits, &p.states);
            self.send_answer(&p.sender, &text);
        }
    }

    /// From the sweep: searches whose cores did not all answer go out with what they have (and, after a debug
    /// gather hold, every search held).
    pub(crate) fn directory_sweep(&mut self) {
        if search::gathers_held() {
            return;
        }
        let due: Vec<u32> =
            self.dir.pending.iter().filter(|(_, p)| p.deadline <= self.now.mono).map(|(id, _)| *id).collect();
        for id in due {
            self.finish_search(id);
        }
    }

    /// A MESSAGE from the search service to every registered device of `to_aor` (owned by this core).
    fn send_answer(&mut self, to_aor: &str, text: &str) {
        let bindings = self.registrar.lookup(to_aor, self.now.secs);
        let from = format!("<sip:{SERVICE}@{}>;tag=dir{}", self.s.domain, self.id);
        let to = format!("<sip:{to_aor}>");
        for (fork, b) in bindings.iter().enumerate() {
            let Some(edge) = b.path.first().and_then(|p| self.edge_for(p)) else { continue };
            self.dir.next = self.dir.next.wrapping_add(1);
            let n = self.dir.next;
            let via = format!(
                "SIP/2.0/TLS {};branch={}{:04x}{:08x}{:02x}",
                self.s.listen,
                String::from_utf8_lossy(BRANCH_PREFIX),
                self.id,
                n,
                fork as u8
            );
            let call_id = format!("dir-{}-{}-{}@{}", self.id, self.now.secs, n, self.s.domain);
            let route = b.path.join(", ");
            let mut out = BytesMut::with_capacity(512 + text.len());
            sip::write_request(
                &mut out,
                "MESSAGE",
                b.contact.as_bytes(),
                &[
                    (HeaderName::Via, via.as_bytes()),
                    (HeaderName::Route, route.as_bytes()),
                    (HeaderName::MaxForwards, b"70"),
                    (HeaderName::From, from.as_bytes()),
                    (HeaderName::To, to.as_bytes()),
                    (HeaderName::CallId, call_id.as_bytes()),
                    (HeaderName::CSeq, b"1 MESSAGE"),
                ],
                Some((b"text/plain;charset=UTF-8", text.as_bytes())),
            );
            self.push(Action::ToEdge { addr: edge, bytes: out.freeze() });
        }
    }
}

/// Whether a response answers one of the search service's MESSAGEs (absorbed: nobody waits for it).
pub fn is_answer_response(msg: &Message) -> bool {
    msg.top_via().and_then(|v| v.branch()).is_some_and(|b| b.starts_with(BRANCH_PREFIX))
}

/// Hands views to the cores (one bounded channel each; the directory thread is the only sender).
pub struct Feed {
    pub senders: Vec<flume::Sender<View>>,
    pub receivers: Vec<Mutex<Option<flume::Receiver<View>>>>,
}

impl Feed {
    pub fn new(cores: usize) -> Feed {
        let (senders, receivers) = (0..cores.max(1))
            .map(|_| {
                let (tx, rx) = flume::bounded(4);
                (tx, Mutex::new(Some(rx)))
            })
            .unzip();
        Feed { senders, receivers }
    }
}

/// The users at start: from the store's synced directory when `[directory]` is configured (the search index
/// installed too), else from the users file.
pub fn initial_users(cfg: &crate::config::Config, realm: &str) -> Result<Users, String> {
    let p = cfg.pool.as_ref().ok_or("config: no [pool] section")?;
    if cfg.directory.is_none() {
        let dir = crate::store::directory::Directory::load(&p.directory).map_err(|e| e.to_string())?;
        return Ok(Users::from_directory(&dir, &cfg.domain, realm));
    }
    let mut store = crate::store::open(cfg.store.as_ref(), &p.database).map_err(|e| e.to_string())?;
    let (view, _) = load_view(&mut *store, &cfg.domain)?;
    Ok((*view.users).clone())
}

/// Loads the view from the store: the enabled people and the stored credentials.
pub fn load_view(store: &mut dyn crate::store::Store, domain: &str) -> Result<(View, usize), String> {
    let rows = store.directory_rows().map_err(|e| e.to_string())?;
    let creds = store.credentials().map_err(|e| e.to_string())?;
    let users = Users::from_rows(&rows, &creds, domain);
    let index = Arc::new(Index::build(&rows, domain));
    search::install(index.clone());
    Ok((View { users: Arc::new(users), index }, rows.len()))
}

crate::counters! {
    /// The pool's directory thread (its only writer).
    pub struct SyncStats {
        syncs,
        /// Syncs that could not run at all (the store, not a source).
        sync_failures,
        /// Sources held back by a sync (unreachable, empty, shrunken): summed over syncs.
        sources_held,
        /// Entries the mapping refused (no alias, a bad HA1...): summed over syncs.
        entries_refused,
        /// Alias conflicts found: summed over syncs.
        conflicts,
        /// People in the view handed to the cores (a gauge).
        people,
    }
}

/// The directory thread: a sync every `interval_s` (0: none, the CLI syncs), and a look at the store every
/// second for a sync or a password set by another process; every change becomes a new view for every core.
pub fn start_thread(cfg: &crate::config::Config, senders: Vec<flume::Sender<View>>) -> Result<(), String> {
    let (Some(p), Some(dir)) = (cfg.pool.as_ref(), cfg.directory.clone()) else { return Ok(()) };
    let mut store = crate::store::open(cfg.store.as_ref(), &p.database).map_err(|e| e.to_string())?;
    let domain = cfg.domain.clone();
    let realm = cfg.realm().to_string();
    let stats = Arc::new(SyncStats::default());
    {
        let stats = stats.clone();
        crate::mgmt::metrics::register("directory", 0, Box::new(move |f| stats.visit(f)));
    }
    std::thread::Builder::new()
        .name("parapet-directory".into())
        .spawn(move || {
            let interval = Duration::from_secs(dir.interval_s);
            let mut last_sync: Option<Instant> = None;
            let mut generation: Option<Vec<(String, String)>> = None;
            // A core whose channel was full gets the latest view on a later round.
            let mut latest: Option<View> = None;
            let mut unsent = vec![false; senders.len()];
            loop {
                if dir.interval_s > 0 && last_sync.is_none_or(|t| t.elapsed() >= interval) {
                    last_sync = Some(Instant::now());
                    match crate::directory::cli::sync_once(&dir, &realm, &mut *store, false, false, super::now_secs()) {
                        Ok(plan) => {
                            stats.syncs.inc();
                            stats.sources_held.add(plan.held.len() as u64);
                            stats.entries_refused.add(plan.skipped.len() as u64);
                            stats.conflicts.add(plan.conflicts.len() as u64);
                            tracing::info!(
                                created = plan.created.len(),
                                updated = plan.updated.len(),
                                disabled = plan.disabled.len(),
                                purged = plan.purged.len(),
                                conflicts = plan.conflicts.len(),
                                held = plan.held.len(),
                                "directory synced"
                            );
                        }
                        Err(e) => {
                            stats.sync_failures.inc();
                            tracing::warn!(error = %e, "directory: sync failed, nothing changed");
                        }
                    }
                }
                match store.sync_marks() {
                    Ok(marks) if generation.as_ref() != Some(&marks) => match load_view(&mut *store, &domain) {
                        Ok((view, rows)) => {
                            generation = Some(marks);
                            stats.people.set(view.users.len() as u64);
                            tracing::info!(
                                people = rows,
                                users = view.users.len(),
                                "directory view handed to the cores"
                            );
                            latest = Some(view);
                            unsent.iter_mut().for_each(|u| *u = true);
                        }
                        Err(e) => tracing::warn!(error = %e, "directory: cannot load the synced people"),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "directory: cannot read the store"),
                }
                if let Some(view) = &latest {
                    for (tx, u) in senders.iter().zip(unsent.iter_mut()) {
                        if *u && tx.try_send(view.clone()).is_ok() {
                            *u = false;
                        }
                    }
                }
                if senders.iter().all(|s| s.is_disconnected()) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map_err(|e| format!("cannot start the directory thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
