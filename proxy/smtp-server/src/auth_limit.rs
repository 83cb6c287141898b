//! Limits on failed AUTH attempts across connections: a growing delay
//! before each wrong-password answer and temporary lockouts, per client
//! address and per user name.
//!
//! The per-session `max_bad_commands` ends one connection after a few
//! failures, but reconnecting is cheap; these counts outlive connections.
//! One [`AuthFailureTracker`] serves every SMTP listener of the process
//! (each listener applies its own [`AuthFailurePolicy`] to the shared
//! counts). It lives in memory only: replicas do not share it, and a
//! restart forgets it.
//!
//! Policy, precisely:
//!
//! - A client is its IPv4 address, or its IPv6 /64 (one host can rotate
//!   through the addresses of its /64 at will). A user is the name exactly
//!   as authenticated (unknown names too, so lockouts reveal nothing about
//!   which users exist).
//! - Every wrong password counts one failure for its client and one for
//!   its user. A count is forgotten once `window` passes without a new
//!   failure, so it never counts fewer failures than a sliding window of
//!   that length would.
//! - The n-th failure of a client waits min(`delay` × 2^(n−1), `max_delay`)
//!   before its 535 is sent (a sleep in that session only).
//! - A client reaching `max_failures_per_address` is locked out for
//!   `lockout`: every AUTH from it, as any user, is refused with 454 4.7.0
//!   and no password is checked (no oracle, no Argon2 work).
//! - A user reaching `max_failures_per_user` (failures from all clients)
//!   is locked out for `lockout`: AUTH as that user is refused, except from
//!   clients that authenticated successfully as that user within `window`
//!   before the lockout began, or during it (known-good clients). So
//!   guessing an application's user name from elsewhere cannot lock the
//!   application out.
//! - A success clears its client's failure count (not its user's: an
//!   application logging in now and then must not give an attacker fresh
//!   guesses at its password).
//! - Concurrent AUTHs being verified as a limit is reached all complete:
//!   the guesses per lockout are bounded by the limit plus that client's
//!   sessions at that moment (bounded by the listener's `max_connections`).
//!
//! Memory is bounded: at most [`MAX_TRACKED`] clients and as many users
//! are remembered (about a hundred bytes each; user names are kept as a
//! keyed hash, whatever their length), plus up to [`MAX_KNOWN_GOOD`]
//! known-good clients per user that authenticated. Beyond that the least
//! recently seen are forgotten first, so a flood of new keys (a botnet
//! trying random names) can make the tracker forget older counts.
//!
//! Time is passed in (`now`), so tests drive a clock of their own.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashlink::LruCache;

/// Clients, and users, remembered at most.
pub const MAX_TRACKED: usize = 65_536;

/// Known-good clients remembered per user.
pub const MAX_KNOWN_GOOD: usize = 16;

/// The numbers of a listener's failure limits (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailurePolicy {
    pub max_failures_per_address: u32,
    pub max_failures_per_user: u32,
    /// A count is forgotten once this passes without a new failure.
    pub window: Duration,
    pub lockout: Duration,
    /// Delay before the first wrong-password answer; doubles with each
    /// further failure of the client.
    pub delay: Duration,
    pub max_delay: Duration,
}

impl Default for AuthFailurePolicy {
    /// 10 failures per client, 30 per user, 15 minute window and lockout,
    /// 0.5 s delay doubling up to 10 s.
    fn default() -> Self {
        Self {
            max_failures_per_address: 10,
            max_failures_per_user: 30,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl AuthFailurePolicy {
    /// The wait before answering the `n`-th failure (n ≥ 1) of a client.
    pub fn delay_for(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What a listener with failure limits needs: its policy and the process's
/// tracker.
#[derive(Clone, Debug)]
pub struct AuthFailureLimits {
    pub policy: AuthFailurePolicy,
    pub tracker: std::sync::Arc<AuthFailureTracker>,
}

/// What a lockout applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Address,
    User,
}

impl Scope {
    /// The `scope` label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Address => "address",
            Scope::User => "user",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client as counted: an IPv4 address (also when IPv4-mapped), or the
/// /64 of an IPv6 address. Displays as `192.0.2.1` or `2001:db8:1:2::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A wrong password, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// How long to wait before answering it.
    pub delay: Duration,
    /// Lockouts this failure started, each with the failure count that
    /// reached the limit (at most one per scope).
    pub lockouts: Vec<(Scope, u32)>,
}

/// Failures counted since the last time `window` passed without one.
#[derive(Clone, Copy, Debug)]
struct Count {
    failures: u32,
    last: Instant,
}

impl Count {
    /// The count at `now` (zero once the window has passed).
    fn current(this: &Option<Count>, now: Instant, window: Duration) -> u32 {
        match this {
            Some(c) if now.saturating_duration_since(c.last) < window => c.failures,
            _ => 0,
        }
    }

    /// Adds a failure at `now`; returns the new count.
    fn add(this: &mut Option<Count>, now: Instant, window: Duration) -> u32 {
        let failures = Count::current(this, now, window).saturating_add(1);
        *this = Some(Count {
            failures,
            last: now,
        });
        failures
    }
}

#[derive(Debug, Default)]
struct ClientEntry {
    count: Option<Count>,
    locked_until: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct UserLockout {
    until: Instant,
    /// Clients that succeeded as the user at or after this time are
    /// known-good: `window` before the lockout began (`None` if that is
    /// before the clock's origin: any success counts).
    good_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct UserEntry {
    count: Option<Count>,
    lockout: Option<UserLockout>,
    /// Clients that authenticated as this user, with the time of their
    /// latest success; newest last.
    known_good: Vec<(ClientKey, Instant)>,
}

/// Whether a lockout ending at `until` still holds at `now`.
fn holds(until: Instant, now: Instant) -> bool {
    now < until
}

impl UserEntry {
    /// The lockout holding at `now`, if any.
    fn lockout_at(&self, now: Instant) -> Option<UserLockout> {
        self.lockout.filter(|l| holds(l.until, now))
    }

    fn is_known_good(&self, client: ClientKey, lockout: UserLockout) -> bool {
        self.known_good
            .iter()
            .any(|&(k, at)| k == client && lockout.good_since.is_none_or(|since| at >= since))
    }
}

struct State {
    clients: LruCache<ClientKey, ClientEntry, RandomState>,
    users: LruCache<u64, UserEntry, RandomState>,
}

/// The process's failure counts (see the module docs). Cheap to share
/// behind an `Arc`; every method takes one short lock.
pub struct AuthFailureTracker {
    state: Mutex<State>,
    /// Keys user names: a per-process random SipHash key, so no client can
    /// make two names collide.
    user_hasher: RandomState,
}

impl fmt::Debug for AuthFailureTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("AuthFailureTracker")
            .field("clients", &s.clients.len())
            .field("users", &s.users.len())
            .finish()
    }
}

impl Default for AuthFailureTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthFailureTracker {
    pub fn new() -> Self {
        Self::with_capacity(MAX_TRACKED)
    }

    /// A tracker remembering at most `capacity` clients and as many users.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                // SipHash: the keys come from clients.
                clients: LruCache::with_hasher(capacity, RandomState::new()),
                users: LruCache::with_hasher(capacity, RandomState::new()),
            }),
            user_hasher: RandomState::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn user_key(&self, user: &str) -> u64 {
        self.user_hasher.hash_one(user)
    }

    /// Whether AUTH from `client` (as `user`, once known) must be refused
    /// now, and for which lockout. Checks the client's lockout first.
    pub fn locked(&self, client: ClientKey, user: Option<&str>, now: Instant) -> Option<Scope> {
        let key = user.map(|u| self.user_key(u));
        let mut s = self.lock();
        if let Some(c) = s.clients.get_mut(&client)
            && c.locked_until.is_some_and(|until| holds(until, now))
        {
            return Some(Scope::Address);
        }
        let u = s.users.get_mut(&key?)?;
        let lockout = u.lockout_at(now)?;
        (!u.is_known_good(client, lockout)).then_some(Scope::User)
    }

    /// Records a wrong password of `client` as `user`; returns the delay
    /// before answering it and the lockouts it started.
    pub fn record_failure(
        &self,
        policy: &AuthFailurePolicy,
        client: ClientKey,
        user: &str,
        now: Instant,
    ) -> Failure {
        let key = self.user_key(user);
        let mut s = self.lock();
        let mut lockouts = Vec::new();

        if s.clients.get_mut(&client).is_none() {
            s.clients.insert(client, ClientEntry::default());
        }
        let c = s.clients.get_mut(&client).expect("just inserted");
        let n = if c.locked_until.is_some_and(|until| holds(until, now)) {
            // A guess verified while a concurrent one locked the client:
            // answered, not counted again.
            policy.max_failures_per_address
        } else {
            c.locked_until = None;
            let n = Count::add(&mut c.count, now, policy.window);
            if n >= policy.max_failures_per_address {
                c.locked_until = Some(now + policy.lockout);
                // The next count starts after the lockout.
                c.count = None;
                lockouts.push((Scope::Address, n));
            }
            n
        };
        let delay = policy.delay_for(n);

        if s.users.get_mut(&key).is_none() {
            s.users.insert(key, UserEntry::default());
        }
        let u = s.users.get_mut(&key).expect("just inserted");
        if u.lockout_at(now).is_none() {
            u.lockout = None;
            let n = Count::add(&mut u.count, now, policy.window);
            if n >= policy.max_failures_per_user {
                u.lockout = Some(UserLockout {
                    until: now + policy.lockout,
                    good_since: now.checked_sub(policy.window),
                });
                u.count = None;
                lockouts.push((Scope::User, n));
            }
        }
        Failure { delay, lockouts }
    }

    /// Records a successful AUTH of `client` as `user`: the client's count
    /// is cleared and it becomes known-good for the user.
    pub fn record_success(
        &self,
        policy: &AuthFailurePolicy,
        client: ClientKey,
        user: &str,
        now: Instant,
    ) {
        let key = self.user_key(user);
        let mut s = self.lock();
        if let Some(c) = s.clients.get_mut(&client) {
            c.count = None;
            if !c.locked_until.is_some_and(|until| holds(until, now)) {
                s.clients.remove(&client);
            }
        }
        if s.users.get_mut(&key).is_none() {
            s.users.insert(key, UserEntry::default());
        }
        let u = s.users.get_mut(&key).expect("just inserted");
        // Successes older than the window can no longer make a client
        // known-good for a lockout beginning from now on; a lockout holding
        // now keeps those it counts.
        let lockout = u.lockout_at(now);
        u.known_good.retain(|&(k, at)| {
            k != client
                && (now.saturating_duration_since(at) <= policy.window
                    || lockout.is_some_and(|l| l.good_since.is_none_or(|since| at >= since)))
        });
        if u.known_good.len() >= MAX_KNOWN_GOOD {
            u.known_good.remove(0);
        }
        u.known_good.push((client, now));
    }

    /// Clients and users remembered now (for tests and debugging).
    pub fn len(&self) -> (usize, usize) {
        let s = self.lock();
        (s.clients.len(), s.users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> ClientKey {
        ClientKey::of(s.parse().unwrap())
    }

    fn policy() -> AuthFailurePolicy {
        AuthFailurePolicy {
            max_failures_per_address: 3,
            max_failures_per_user: 5,
            window: 100 * SEC,
            lockout: 60 * SEC,
            delay: Duration::from_millis(500),
            max_delay: 10 * SEC,
        }
    }

    #[test]
    fn delay_doubles_per_failure_up_to_the_cap() {
        let p = policy();
        let ms = |n| p.delay_for(n).as_millis();
        assert_eq!(
            (1..=7).map(ms).collect::<Vec<_>>(),
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000]
        );
        assert_eq!(ms(u32::MAX), 10_000, "no overflow");
        assert_eq!(ms(0), 500);

        // Through the tracker: per client, across users.
        let p = AuthFailurePolicy {
            max_failures_per_address: 100,
            ..policy()
        };
        let t = AuthFailureTracker::new();
        let now = Instant::now();
        let c = ip("192.0.2.1");
        let delays: Vec<u128> = (0..6)
            .map(|i| {
                t.record_failure(&p, c, &format!("user{i}"), now + i * SEC)
                    .delay
                    .as_millis()
            })
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10_000]);
        // Another client starts from the base delay.
        let other = t.record_failure(&p, ip("192.0.2.2"), "user0", now + 6 * SEC);
        assert_eq!(other.delay, p.delay);
    }

    #[test]
    fn client_lockout_at_the_limit_refuses_every_user_until_it_ends() {
        let (p, t, now) = (policy(), AuthFailureTracker::new(), Instant::now());
        let c = ip("192.0.2.1");
        assert_eq!(t.record_failure(&p, c, "a", now).lockouts, []);
        assert_eq!(t.record_failure(&p, c, "b", now + SEC).lockouts, []);
        assert_eq!(t.locked(c, Some("a"), now + SEC), None, "limit - 1");
        let f = t.record_failure(&p, c, "c", now + 2 * SEC);
        assert_eq!(f.lockouts, [(Scope::Address, 3)]);
        assert_eq!(f.delay, 2 * SEC, "the failure at the limit is delayed too");
        let locked_at = now + 2 * SEC;
        for user in [None, Some("a"), Some("nobody")] {
            assert_eq!(t.locked(c, user, locked_at), Some(Scope::Address));
        }
        assert_eq!(t.locked(ip("192.0.2.2"), Some("a"), locked_at), None);
        // Just before and at its end.
        let end = locked_at + p.lockout;
        assert_eq!(
            t.locked(c, None, end - Duration::from_millis(1)),
            Some(Scope::Address)
        );
        assert_eq!(t.locked(c, None, end), None);
        // Counting starts over: no lockout before 3 new failures.
        let f = t.record_failure(&p, c, "a", end);
        assert_eq!((f.delay, f.lockouts), (p.delay, vec![]));
    }

    #[test]
    fn failures_are_forgotten_once_the_window_passes_without_one() {
        let (p, t, now) = (policy(), AuthFailureTracker::new(), Instant::now());
        let c = ip("192.0.2.1");
        t.record_failure(&p, c, "a", now);
        t.record_failure(&p, c, "a", now + SEC);
        // A full window later: both forgotten.
        let later = now + SEC + p.window;
        let f = t.record_failure(&p, c, "a", later);
        assert_eq!((f.delay, f.lockouts), (p.delay, vec![]));
        // Failures less than a window apart add up, however long the
        // series (at least as strict as a sliding window).
        let step = p.window - SEC;
        t.record_failure(&p, c, "a", later + step);
        let f = t.record_failure(&p, c, "a", later + 2 * step);
        assert_eq!(f.lockouts, [(Scope::Address, 3)]);
    }

    #[test]
    fn success_clears_the_client_count() {
        let (p, t, now) = (policy(), AuthFailureTracker::new(), Instant::now());
        let c = ip("192.0.2.1");
        t.record_failure(&p, c, "app", now);
        t.record_failure(&p, c, "app", now + SEC);
        t.record_success(&p, c, "app", now + 2 * SEC);
        let f = t.record_failure(&p, c, "app", now + 3 * SEC);
        assert_eq!((f.delay, f.lockouts), (p.delay, vec![]));
        assert_eq!(t.record_failure(&p, c, "app", now + 4 * SEC).lockouts, []);
        // But not the user's: 5 failures as "app" in all lock it.
        let f = t.record_failure(&p, ip("192.0.2.9"), "app", now + 5 * SEC);
        assert_eq!(f.lockouts, [(Scope::User, 5)]);
    }

    #[test]
    fn user_lockout_spares_known_good_clients_only() {
        let p = AuthFailurePolicy {
            max_failures_per_address: 100,
            ..policy()
        };
        let (t, t0) = (AuthFailureTracker::new(), Instant::now());
        let app = ip("10.0.0.1");
        let stale = ip("10.0.0.2");
        // `stale` succeeded more than a window before the lockout, `app`
        // within it.
        t.record_success(&p, stale, "app", t0);
        let t1 = t0 + p.window + 10 * SEC;
        t.record_success(&p, app, "app", t1);
        // Five attackers, one guess each: the user is locked.
        let mut lockouts = Vec::new();
        for i in 1..=5 {
            let f = t.record_failure(&p, ip(&format!("198.51.100.{i}")), "app", t1 + i * SEC);
            lockouts.extend(f.lockouts);
        }
        assert_eq!(lockouts, [(Scope::User, 5)]);
        let during = t1 + 10 * SEC;
        assert_eq!(
            t.locked(ip("198.51.100.6"), Some("app"), during),
            Some(Scope::User)
        );
        assert_eq!(
            t.locked(ip("198.51.100.1"), Some("app"), during),
            Some(Scope::User)
        );
        assert_eq!(t.locked(stale, Some("app"), during), Some(Scope::User));
        assert_eq!(t.locked(app, Some("app"), during), None, "known-good");
        // Before the user is known (AUTH LOGIN's first step) and for other
        // users nobody is refused.
        assert_eq!(t.locked(ip("198.51.100.6"), None, during), None);
        assert_eq!(t.locked(ip("198.51.100.6"), Some("other"), during), None);
        // The known-good client keeps working through the lockout, even
        // past the window since its last success before it.
        let late = t1 + 5 * SEC + p.lockout - SEC;
        assert_eq!(t.locked(app, Some("app"), late), None);
        t.record_success(&p, app, "app", late);
        // Failures during the lockout do not extend it.
        t.record_failure(&p, ip("198.51.100.7"), "app", late);
        let end = t1 + 5 * SEC + p.lockout;
        assert_eq!(t.locked(ip("198.51.100.6"), Some("app"), end), None);
    }

    #[test]
    fn concurrent_guesses_at_the_limit_start_one_lockout() {
        let (p, t, now) = (policy(), AuthFailureTracker::new(), Instant::now());
        let c = ip("192.0.2.1");
        let results: Vec<Failure> = (0..6)
            .map(|i| t.record_failure(&p, c, &format!("u{i}"), now))
            .collect();
        let lockouts: Vec<_> = results.iter().flat_map(|f| f.lockouts.clone()).collect();
        assert_eq!(lockouts, [(Scope::Address, 3)]);
        // Those verified after it still wait the longest delay of the limit.
        assert!(results[3..].iter().all(|f| f.delay == p.delay_for(3)));
    }

    #[test]
    fn remembered_keys_are_bounded_least_recent_first() {
        let p = AuthFailurePolicy {
            max_failures_per_address: 2,
            max_failures_per_user: 2,
            ..policy()
        };
        let (t, now) = (AuthFailureTracker::with_capacity(4), Instant::now());
        let c0 = ip("192.0.2.100");
        t.record_failure(&p, c0, "first", now);
        for i in 0..20 {
            t.record_failure(&p, ip(&format!("192.0.2.{i}")), &format!("user{i}"), now);
            // c0 seen again now and then stays remembered...
            if i % 2 == 0 {
                assert_eq!(t.locked(c0, None, now), None);
            }
        }
        assert_eq!(t.len(), (4, 4));
        // ...and its second failure locks it.
        let f = t.record_failure(&p, c0, "x", now);
        assert_eq!(f.lockouts, [(Scope::Address, 2)]);
        // "first" was pushed out: its next failure counts as its first.
        let f = t.record_failure(&p, ip("203.0.113.1"), "first", now);
        assert_eq!(f.lockouts, []);
        assert_eq!(t.len(), (4, 4));
        // The default bound.
        let t = AuthFailureTracker::new();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let c = ClientKey::of(IpAddr::V4(i.into()));
            t.record_failure(&p, c, "u", now);
        }
        assert_eq!(t.len(), (MAX_TRACKED, 1));
    }

    #[test]
    fn known_good_clients_per_user_are_bounded() {
        let (p, t, now) = (policy(), AuthFailureTracker::new(), Instant::now());
        for i in 0..100u32 {
            t.record_success(&p, ClientKey::of(IpAddr::V4(i.into())), "app", now);
        }
        let s = t.lock();
        let key = t.user_key("app");
        let good = &s.users.peek(&key).unwrap().known_good;
        assert_eq!(good.len(), MAX_KNOWN_GOOD);
        assert_eq!(good.last().unwrap().0, ClientKey::of(IpAddr::V4(99.into())));
    }

    #[test]
    fn clients_are_ipv4_addresses_or_ipv6_64s() {
        assert_eq!(
            ip("2001:db8:1:2::5"),
            ip("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(ip("2001:db8:1:2::5"), ip("2001:db8:1:3::5"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_ne!(ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(ip("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ip("::ffff:192.0.2.1").to_string(), "192.0.2.1");
        // A whole /64 shares one count.
        let (p, t, now) = (policy(), AuthFailureTracker::new(), Instant::now());
        for i in 1..=3 {
            t.record_failure(&p, ip(&format!("2001:db8::{i}")), "u", now);
        }
        assert_eq!(
            t.locked(ip("2001:db8::ffff"), None, now),
            Some(Scope::Address)
        );
        assert_eq!(t.locked(ip("2001:db8:0:1::1"), None, now), None);
    }
}
