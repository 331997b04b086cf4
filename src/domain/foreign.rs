//! Members of other operators, learnt through federation: each `(origin operator, member
//! pseudonym)` pair gets a local id at or above `FOREIGN_MEMBER_BASE`, so a flag is
//! counted once however many paths it arrives by. How many one origin may introduce is
//! bounded (`Policy::max_foreign_members_per_origin`): a peer cannot make this server
//! remember without end.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::signing::OriginKey;
use crate::model::{FOREIGN_MEMBER_BASE, ForeignMember, PrincipalId};

/// This operator's federation identity and the members of other operators it knows.
pub struct Federation {
    pub operator_id: [u8; 8],
    pub operator_name: String,
    pseudonym_key: [u8; 32],
    /// Signs the events this operator originates, for peers that pass them on.
    pub origin_key: OriginKey,
    foreign: Mutex<ForeignMembers>,
    /// Counts registrations, so an orphan scan knows what was used after it began.
    uses: AtomicU64,
}

#[derive(Default)]
struct ForeignMembers {
    /// By local id: the outgoing path looks one up for every change of a foreign flag.
    by_id: HashMap<PrincipalId, ForeignMember>,
    /// (origin operator, pseudonym) → local id: the identity events arrive with.
    by_identity: HashMap<([u8; 8], String), PrincipalId>,
    /// Members known per origin, for the bound.
    per_origin: HashMap<[u8; 8], usize>,
    /// The `Federation::uses` tick of each member's latest registration: a member used
    /// after an orphan scan began is never forgotten by it.
    last_used: HashMap<PrincipalId, u64>,
    next_id: PrincipalId,
}

impl ForeignMembers {
    fn of(members: Vec<ForeignMember>) -> ForeignMembers {
        let next_id = members
            .iter()
            .map(|member| member.id.saturating_add(1))
            .max()
            .unwrap_or(FOREIGN_MEMBER_BASE);
        let mut per_origin: HashMap<[u8; 8], usize> = HashMap::new();
        for member in &members {
            *per_origin.entry(member.origin).or_default() += 1;
        }
        let by_identity = members
            .iter()
            .map(|member| ((member.origin, member.pseudonym.clone()), member.id))
            .collect();
        let by_id = members.into_iter().map(|member| (member.id, member)).collect();
        ForeignMembers {
            by_id,
            by_identity,
            per_origin,
            last_used: HashMap::new(),
            next_id,
        }
    }
}

/// What registering an event's member did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    Known(PrincipalId),
    New(PrincipalId),
    /// The member's shown name changed: (id, old display, new display).
    Renamed(PrincipalId, String, String),
}

impl Registered {
    pub fn id(&self) -> PrincipalId {
        match self {
            Registered::Known(id) | Registered::New(id) | Registered::Renamed(id, _, _) => *id,
        }
    }
}

impl Federation {
    pub fn new(
        operator_id: [u8; 8],
        operator_name: String,
        pseudonym_key: [u8; 32],
        origin_key: OriginKey,
        members: Vec<ForeignMember>,
    ) -> Federation {
        Federation {
            operator_id,
            operator_name,
            pseudonym_key,
            origin_key,
            foreign: Mutex::new(ForeignMembers::of(members)),
            uses: AtomicU64::new(1),
        }
    }

    /// Forgets the foreign members known and takes `members` (as stored now) instead: the
    /// store changed under this copy (another node's commits applied here).
    pub fn replace_foreign_members(&self, members: Vec<ForeignMember>) {
        *self.foreign.lock() = ForeignMembers::of(members);
    }

    /// The stable opaque name of a local member, the same for every peer.
    pub fn pseudonym(&self, member_name: &str) -> String {
        let hash = blake3::keyed_hash(&self.pseudonym_key, member_name.as_bytes());
        format!("m-{}", &hash.to_hex()[..16])
    }

    pub fn foreign_by_id(&self, id: PrincipalId) -> Option<ForeignMember> {
        self.foreign.lock().by_id.get(&id).cloned()
    }

    /// The origin operator of a foreign member.
    pub fn origin_of(&self, id: PrincipalId) -> Option<[u8; 8]> {
        self.foreign.lock().by_id.get(&id).map(|member| member.origin)
    }

    /// How many members of `origin` are known.
    pub fn n_members_of(&self, origin: &[u8; 8]) -> usize {
        self.foreign.lock().per_origin.get(origin).copied().unwrap_or(0)
    }

    /// The local id of `(origin, pseudonym)`, registering it (in memory; the caller writes
    /// the record in its batch) when new, within `max_per_origin`. A name the origin
    /// reveals (or an origin renamed) replaces the one shown; `display: None` (a relayed
    /// event, whose names are the relay's words) keeps what is shown.
    pub fn register(
        &self,
        origin: [u8; 8],
        origin_name: &str,
        pseudonym: &str,
        display: Option<String>,
        max_per_origin: usize,
    ) -> Result<Registered, String> {
        let tick = self.uses.load(Ordering::SeqCst);
        let mut foreign = self.foreign.lock();
        let identity = (origin, pseudonym.to_owned());
        if let Some(id) = foreign.by_identity.get(&identity).copied() {
            foreign.last_used.insert(id, tick);
        }
        if let Some(id) = foreign.by_identity.get(&identity).copied()
            && let Some(member) = foreign.by_id.get_mut(&id)
        {
            let Some(display) = display else {
                return Ok(Registered::Known(id));
            };
            if member.display == display {
                return Ok(Registered::Known(id));
            }
            let old = std::mem::replace(&mut member.display, display.clone());
            member.origin_name = origin_name.to_owned();
            return Ok(Registered::Renamed(id, old, display));
        }
        let n_known = foreign.per_origin.get(&origin).copied().unwrap_or(0);
        if n_known >= max_per_origin {
            return Err(format!(
                "member_id: the origin already has {n_known} members here, the most one origin may have"
            ));
        }
        let id = foreign.next_id;
        if id == PrincipalId::MAX {
            return Err("member_id: foreign member ids are exhausted".to_owned());
        }
        foreign.next_id += 1;
        let display = display.unwrap_or_else(|| display_name(origin_name, "", pseudonym));
        let member = ForeignMember {
            id,
            origin,
            origin_name: origin_name.to_owned(),
            pseudonym: pseudonym.to_owned(),
            display,
        };
        foreign.by_identity.insert(identity, id);
        foreign.by_id.insert(id, member);
        foreign.last_used.insert(id, tick);
        *foreign.per_origin.entry(origin).or_default() += 1;
        Ok(Registered::New(id))
    }

    /// Starts an orphan scan: members registered from now on are kept by it.
    pub fn begin_orphan_scan(&self) -> u64 {
        self.uses.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Forgets the members no row refers to (`referenced` holds every member id the store's
    /// flags and change log name, as read by a scan begun at `scan`) and not used since the
    /// scan began; returns their ids. Frees their places under the per-origin bound.
    pub fn forget_orphans(&self, referenced: &HashSet<PrincipalId>, scan: u64) -> Vec<PrincipalId> {
        let mut foreign = self.foreign.lock();
        let mut orphans: Vec<PrincipalId> = foreign
            .by_id
            .keys()
            .copied()
            .filter(|id| !referenced.contains(id))
            .filter(|id| foreign.last_used.get(id).is_none_or(|used| *used < scan))
            .collect();
        // In id order, not the map's (which differs from one process to the next).
        orphans.sort_unstable();
        for id in &orphans {
            if let Some(member) = foreign.by_id.remove(id) {
                foreign.by_identity.remove(&(member.origin, member.pseudonym));
                if let Some(n) = foreign.per_origin.get_mut(&member.origin) {
                    *n = n.saturating_sub(1);
                }
            }
            foreign.last_used.remove(id);
        }
        orphans
    }
}

pub fn display_name(origin_name: &str, member_name: &str, pseudonym: &str) -> String {
    let member = if member_name.is_empty() { pseudonym } else { member_name };
    format!("{origin_name}/{member}")
}
