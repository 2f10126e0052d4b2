def edit(p, pairs):
    s=open(p).read()
    for old,new in pairs:
        assert old in s, (p, old)
        s=s.replace(old,new,1)
    open(p,'w').write(s)

edit('enforcer/src/agent/metrics.rs', [
('''//! path is 404. Request heads are read up to 8 KiB and for at most 5 s. A scrape reads counters
//! only: the sampler's last snapshot of the maps (`sampler`), the reporter's and the agent's
//! counters; it never walks a map or waits for the maps' lock.''','''//! path is 404. Request heads are read up to 8 KiB and for at most 5 s. A scrape reads counters
//! only: `STATS` through map handles of its own (one lookup per counter), the sampler's last
//! snapshot of the map fill (`sampler`), the reporter's and the agent's counters; it never walks
//! a map or waits for the maps' lock.'''),
('''use crate::agent::{events::Reporter, sampler::Sampled};''','''use crate::{
    agent::{events::Reporter, sampler::Sampled},
    datapath::maps::LiveMaps,
};'''),
('''    pub sampled: Sampled,
''','''    pub sampled: Sampled,
    /// Handles of the metrics' own, for `STATS` (never locked: reads only).
    pub stats: Arc<LiveMaps>,
'''),
('''    let (stats, fill) = (snapshot.stats, snapshot.fill);''','''    let (stats, fill) = (sources.stats.stats(), snapshot.fill);'''),
])
edit('enforcer/src/agent/main_loop.rs', [
('''                metrics::Sources {
                    reporter: self.reporter.clone(),
                    sampled: sampled.clone(),
                    counters: counters.clone(),
                },''','''                metrics::Sources {
                    reporter: self.reporter.clone(),
                    sampled: sampled.clone(),
                    stats: stats.clone(),
                    counters: counters.clone(),
                },'''),
('''        let (sampler, sampled) = Sampler::start(maps, self.blocklist_sweep)
            .context("starting the sampler thread")?;''','''        let (sampler, sampled) = Sampler::start(maps, self.blocklist_sweep)
            .context("starting the sampler thread")?;
        let stats = Arc::new(
            self.datapath
                .open_maps()
                .context("opening the maps for the metrics")?,
        );'''),
])
edit('docs/operations.md', [
('''A scrape never walks a map: it reads the sampler's last snapshot (`STATS` and the
`BLOCKLIST` count once a second, `FLOWS` and `BLOCKLIST_OVERFLOW` every 5 s), so it answers
while the agent is flooded.''','''A scrape never walks a map: it reads `STATS` (one lookup per counter) and the sampler's last
count of the maps (`BLOCKLIST` once a second, `FLOWS` and `BLOCKLIST_OVERFLOW` every 5 s), so it
answers while the agent is flooded.'''),
])
