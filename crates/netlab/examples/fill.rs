//! Fills a namespace's conntrack table with cluster-shaped entries and writes the ground truth:
//! `fill NETNS ENTRIES OUTDIR [STALE_FRACTION]`. For exploring by hand (`ghostbuster list/scan
//! --netns NETNS --from-file OUTDIR/cluster.json`); the namespace must exist.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        eprintln!("usage: fill NETNS ENTRIES OUTDIR [STALE_FRACTION]");
        std::process::exit(2);
    }
    let spec = netlab::bulk::BulkSpec {
        entries: a[1].parse()?,
        stale_fraction: a.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0.02),
        ..Default::default()
    };
    let (cluster, truth) = netlab::bulk::fill(Some(&a[0]), &spec)?;
    netlab::bulk::write_truth(std::path::Path::new(&a[2]), &spec, &cluster, &truth, false)?;
    println!(
        "created {} ({} stale) in {}",
        truth.created, truth.stale, a[0]
    );
    Ok(())
}
