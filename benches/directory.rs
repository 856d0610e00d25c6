//! Directory microbenchmarks (`cargo bench --bench directory`), 100,000 people:
//!
//! - a search by name (prefix, one term; two qualified terms; a short prefix that matches thousands) — the
//!   index must answer well under a millisecond;
//! - building the index (done after every sync);
//! - planning a sync in which ten people changed (what a sync costs once the sources are read).

use std::collections::HashSet;

use divan::{black_box, Bencher};
use parapet::directory::search::{Index, Query};
use parapet::directory::sync::{plan, Fetch, Settings, Snapshot};
use parapet::store::DirectoryRow;

fn main() {
    divan::main();
}

const PEOPLE: usize = 100_000;
const FIRST: [&str; 10] = ["Ann", "Bob", "Carl", "Dana", "Erin", "Fay", "Gus", "Hal", "Ida", "Jon"];
const LAST: [&str; 10] = ["Lee", "Smith", "Ångström", "Park", "Ray", "Moe", "Ng", "Leeds", "Ortiz", "Kim"];

fn people() -> Vec<DirectoryRow> {
    (0..PEOPLE)
        .map(|i| {
            let first = format!("{}{}", FIRST[i % 10], i / 100);
            let last = format!("{}{}", LAST[(i / 10) % 10], i % 1000);
            DirectoryRow {
                alias: format!("u{i}"),
                source: "corp".into(),
                key: format!("uid=u{i},ou=people,dc=corp"),
                display_name: format!("{first} {last}"),
                first,
                last,
                account: format!("CORP\\u{i}"),
                ..Default::default()
            }
        })
        .collect()
}

#[divan::bench(args = ["lee1", "first:ann12 last:lee", "a", "angstrom12"])]
fn search(bencher: Bencher, q: &str) {
    let index = Index::build(&people(), "example.com");
    let q = Query::parse(q).expect("query");
    bencher.bench_local(|| black_box(index.search(black_box(&q))));
}

#[divan::bench(sample_count = 5)]
fn build_index(bencher: Bencher) {
    let rows = people();
    bencher.bench_local(|| black_box(Index::build(black_box(&rows), "example.com")));
}

#[divan::bench(sample_count = 5)]
fn plan_ten_changes(bencher: Bencher) {
    let current = people();
    let present: HashSet<String> = current.iter().map(|r| r.key.clone()).collect();
    let changed: Vec<DirectoryRow> =
        current.iter().step_by(PEOPLE / 10).map(|r| DirectoryRow { title: "Changed".into(), ..r.clone() }).collect();
    let settings = Settings { max_delete_share: 0.2, retention_s: 86_400, now: 1_000_000 };
    bencher.bench_local(|| {
        let snap = Snapshot {
            source: "corp".into(),
            precedence: 1,
            fetch: Fetch::Incremental { changed: changed.clone(), present: present.clone() },
            mark: None,
            skipped: Vec::new(),
        };
        let p = plan(&current, vec![snap], &settings);
        assert_eq!(p.updated.len(), 10);
        black_box(p)
    });
}
