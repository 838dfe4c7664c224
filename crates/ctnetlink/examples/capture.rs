//! Writes the raw dump messages of a namespace's conntrack table to files, one per entry:
//! `capture NETNS OUTDIR`. Used to refresh the codec's byte fixtures (tests/fixtures/*.bin).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(ns), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: capture NETNS OUTDIR");
        std::process::exit(2);
    };
    let mut ct = ctnetlink::Conntrack::open_in(Some(&ns))?;
    let mut msgs = Vec::new();
    ct.dump_raw(None, &ctnetlink::Filter::default(), |raw| {
        msgs.push(raw.to_vec())
    })?;
    for (n, raw) in msgs.into_iter().enumerate() {
        let flow = ctnetlink::parse_message(&raw)?.ok_or("not a conntrack entry")?;
        let name = format!("{dir}/{}-{}-{n}.bin", flow.family.name(), flow.proto_name());
        std::fs::write(&name, &raw)?;
        println!("{name}: {flow:?}");
    }
    Ok(())
}
