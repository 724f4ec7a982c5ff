//! Building a schedule: the checks every schedule passes, then the routes from the configured
//! chooser ([`crate::RouteChooser`]) or from the caller.

use ultraep_topo::Topology;

use crate::chooser_layer::LayerChooser;
use crate::chooser_per_expert::PerExpertChooser;
use crate::route_choice::RouteChoice;
use crate::{
    ExpertState, ReplicaSet, Route, RouteChooser, ScheduledFanout, TransferConfig,
    TransferSchedule, XferError,
};

impl TransferSchedule {
    /// Chooses a route for every expert of `replicas`, whose state is `state`, on `topology`.
    pub fn build(
        replicas: &ReplicaSet,
        state: &ExpertState,
        topology: &Topology,
        config: TransferConfig,
    ) -> Result<Self, XferError> {
        let mut schedule = Self::default();
        ScheduleBuilder::default().build_into(replicas, state, topology, config, &mut schedule)?;
        Ok(schedule)
    }

    /// Builds `replicas`' schedule with the routes given, one per fan-out in order, each with the
    /// size of the pieces it travels in: for experiments, tests and callers that choose their own.
    /// Every shape [`Route`] can describe is accepted if it can be carried out: relays must be
    /// distinct destinations of their expert, a deep tree needs two relays, and pieces must be a whole
    /// number of tiles that divides the chunk (direct fan-out travels in chunks).
    ///
    /// ```
    /// use ultraep_topo::Preset;
    /// use ultraep_xfer::*;
    /// let topo = Preset::HgxH100.topology(1)?;
    /// let replicas = ReplicaSet::new(vec![Fanout::new(0, 0, 0, vec![(1, 0), (2, 0), (3, 0)])?])?;
    /// let state = ExpertState::opaque(1 << 20)?;
    /// let deep = Route::Relayed { relays: vec![1, 2], deep: true };
    /// let config = TransferConfig::default();
    /// let schedule = TransferSchedule::with_routes(&replicas, &state, &topo, config, vec![(deep, config.chunk_bytes)])?;
    /// assert_eq!(schedule.relayed_count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_routes(
        replicas: &ReplicaSet,
        state: &ExpertState,
        topology: &Topology,
        config: TransferConfig,
        routes: Vec<(Route, u32)>,
    ) -> Result<Self, XferError> {
        let direct = TransferConfig {
            allow_relays: false,
            ..config
        };
        let mut schedule = Self::build(replicas, state, topology, direct)?;
        schedule.config = config;
        if routes.len() != schedule.fanouts.len() {
            return Err(XferError::InvalidConfig {
                reason: "one route per fan-out is needed",
            });
        }
        for (fanout, (route, piece_bytes)) in schedule.fanouts.iter_mut().zip(routes) {
            let invalid = |reason| XferError::InvalidRoute {
                expert: fanout.expert,
                reason,
            };
            if piece_bytes == 0
                || !piece_bytes.is_multiple_of(config.tile_bytes)
                || !config.chunk_bytes.is_multiple_of(piece_bytes)
            {
                return Err(invalid("pieces must be whole tiles that divide the chunk"));
            }
            if let Route::Relayed { relays, deep } = &route {
                if relays.is_empty() {
                    return Err(invalid("a relayed route needs a relay"));
                }
                if *deep && relays.len() < 2 {
                    return Err(invalid("a deep tree needs two relays"));
                }
                for (index, relay) in relays.iter().enumerate() {
                    if !fanout.destinations.iter().any(|d| d.0 == *relay) {
                        return Err(invalid("a relay must be a destination"));
                    }
                    if relays[..index].contains(relay) {
                        return Err(invalid("a relay listed twice"));
                    }
                }
            } else if piece_bytes != config.chunk_bytes {
                return Err(invalid("direct fan-out travels in chunks"));
            }
            fanout.route = route;
            fanout.piece_bytes = piece_bytes;
        }
        Ok(schedule)
    }
}

/// Builds schedules again and again in the same buffers: once warm (after a layer with as many
/// fan-outs, destinations and relays), [`ScheduleBuilder::build_into`] does not allocate.
///
/// ```
/// use ultraep_topo::Preset;
/// use ultraep_xfer::*;
/// let topo = Preset::HgxH100.topology(1)?;
/// let replicas = ReplicaSet::new(vec![Fanout::new(0, 0, 0, vec![(1, 0), (2, 0)])?])?;
/// let state = ExpertState::opaque(1 << 20)?;
/// let mut builder = ScheduleBuilder::default();
/// let mut schedule = TransferSchedule::default();
/// builder.build_into(&replicas, &state, &topo, TransferConfig::default(), &mut schedule)?;
/// assert_eq!(schedule, TransferSchedule::build(&replicas, &state, &topo, TransferConfig::default())?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct ScheduleBuilder {
    order: Vec<usize>,
    layer: LayerChooser,
    per_expert: PerExpertChooser,
    /// Fan-outs and relay lists of earlier schedules, kept for their buffers.
    spare_fanouts: Vec<ScheduledFanout>,
    spare_relays: Vec<Vec<u32>>,
}

impl ScheduleBuilder {
    /// Builds into `schedule` what [`TransferSchedule::build`] returns, reusing the buffers of
    /// this builder and of the schedule's previous contents. On error `schedule` is left empty.
    pub fn build_into(
        &mut self,
        replicas: &ReplicaSet,
        state: &ExpertState,
        topology: &Topology,
        config: TransferConfig,
        schedule: &mut TransferSchedule,
    ) -> Result<(), XferError> {
        while let Some(mut fanout) = schedule.fanouts.pop() {
            if let Route::Relayed { relays, .. } =
                std::mem::replace(&mut fanout.route, Route::Direct)
            {
                self.spare_relays.push(relays);
            }
            self.spare_fanouts.push(fanout);
        }
        config.validate()?;
        let state_bytes = state.bytes();
        if state_bytes == 0 {
            return Err(XferError::EmptyState);
        }
        let rank_count = topology.rank_count() as u32;
        for fanout in &replicas.fanouts {
            for rank in
                std::iter::once(fanout.master).chain(fanout.destinations.iter().map(|d| d.0))
            {
                if rank >= rank_count {
                    return Err(XferError::UnknownRank { rank, rank_count });
                }
            }
        }
        schedule.config = config;
        schedule.state_bytes = state_bytes;
        for fanout in &replicas.fanouts {
            let mut scheduled = self.spare_fanouts.pop().unwrap_or(ScheduledFanout {
                expert: 0,
                master: 0,
                master_index: 0,
                destinations: Vec::new(),
                route: Route::Direct,
                piece_bytes: 0,
            });
            scheduled.expert = fanout.expert;
            scheduled.master = fanout.master;
            scheduled.master_index = fanout.master_index;
            scheduled.destinations.clear();
            scheduled
                .destinations
                .extend_from_slice(&fanout.destinations);
            scheduled.piece_bytes = config.chunk_bytes;
            schedule.fanouts.push(scheduled);
        }
        // Experts with the most destinations choose their route first.
        self.order.clear();
        self.order.extend(0..replicas.fanouts.len());
        self.order.sort_unstable_by_key(|&i| {
            let fanout = &replicas.fanouts[i];
            (
                std::cmp::Reverse(fanout.destinations.len()),
                fanout.expert,
                i,
            )
        });
        let mut routes = RouteChoice {
            fanouts: &mut schedule.fanouts,
            order: &self.order,
            spare_relays: &mut self.spare_relays,
            state_bytes,
            topology,
            config,
        };
        if !config.allow_relays {
            return Ok(());
        }
        match config.chooser {
            RouteChooser::Layer => self.layer.choose(&mut routes),
            RouteChooser::PerExpert => self.per_expert.choose(&mut routes),
        }
        Ok(())
    }
}
