use super::*;

fn person(source: &str, alias: &str, name: &str) -> DirectoryRow {
    DirectoryRow {
        alias: alias.into(),
        source: source.into(),
        key: format!("uid={alias},dc={source}"),
        display_name: name.into(),
        ..Default::default()
    }
}

fn snap(source: &str, precedence: u32, rows: Vec<DirectoryRow>) -> Snapshot {
    Snapshot { source: source.into(), precedence, fetch: Fetch::Full(rows), mark: None, skipped: vec![] }
}

const S: Settings = Settings { max_delete_share: 0.5, retention_s: 100, now: 1000 };

fn aliases(rows: &[DirectoryRow]) -> Vec<&str> {
    rows.iter().map(|r| r.alias.as_str()).collect()
}

#[test]
fn first_sync_creates_one_namespace_and_reports_conflicts() {
    let a = vec![person("a", "ann", "Ann A"), person("a", "lee", "Lee A")];
    let b = vec![person("b", "lee", "Lee B"), person("b", "bob", "Bob B")];
    // Given in the wrong order: precedence decides, not the order of the list.
    let p = plan(&[], vec![snap("b", 2, b), snap("a", 1, a)], &S);
    assert_eq!(aliases(&p.created), ["ann", "bob", "lee"]);
    assert_eq!(p.created[2].source, "a", "the lower precedence keeps the alias");
    assert_eq!(
        p.conflicts,
        vec![Conflict {
            alias: "lee".into(),
            winner: ("a".into(), "uid=lee,dc=a".into()),
            loser: ("b".into(), "uid=lee,dc=b".into()),
            names: ("Lee A".into(), "Lee B".into()),
        }]
    );
    assert!(
        p.render().contains("conflict\tlee\tLee A (a, uid=lee,dc=a) wins over Lee B (b, uid=lee,dc=b)"),
        "{}",
        p.render()
    );
    assert_eq!(p.writes().len(), 3);
}

#[test]
fn a_home_pool_move_is_an_update_and_shows_in_the_plan() {
    let cur = vec![person("a", "ann", "Ann"), DirectoryRow { pool: "hq".into(), ..person("a", "bo", "Bo") }];
    let now = vec![DirectoryRow { pool: "branch".into(), ..person("a", "ann", "Ann") }, person("a", "bo", "Bo")];
    let p = plan(&cur, vec![snap("a", 1, now)], &S);
    assert_eq!(aliases(&p.updated), ["ann", "bo"]);
    let out = p.render();
    assert!(out.lines().any(|l| l == "update\tann\ta\tAnn\tpool=branch"), "{out}");
    assert!(out.lines().any(|l| l == "update\tbo\ta\tBo"), "back to the default pool: {out}");
}

#[test]
fn changes_rename_disable_delete_and_purge() {
    let mut cur = vec![
        person("a", "ann", "Ann"),
        person("a", "bob", "Bob"),
        person("a", "cat", "Cat"),
        person("a", "dan", "Dan"),
        person("a", "eve", "Eve"),
    ];
    cur.push(DirectoryRow { disabled_at: Some(850), ..person("a", "old", "Old") });
    cur.push(DirectoryRow { disabled_at: Some(950), ..person("a", "new", "Recent") });
    let mut bob = person("a", "bob", "Robert");
    bob.title = "Boss".into();
    let cat = DirectoryRow { disabled_at: Some(0), ..person("a", "cat", "Cat") };
    let now = vec![person("a", "ann", "Ann"), bob, cat, person("a", "dan", "Dan"), person("a", "fay", "Fay")];
    let p = plan(&cur, vec![snap("a", 1, now)], &S);
    assert_eq!(aliases(&p.created), ["fay"]);
    assert_eq!(aliases(&p.updated), ["bob"]);
    assert_eq!(p.updated[0].display_name, "Robert");
    assert_eq!(aliases(&p.disabled), ["cat", "eve"], "marked disabled in the source; gone from it");
    assert!(p.disabled.iter().all(|r| r.disabled_at == Some(1000)));
    assert_eq!(p.purged, ["old"], "disabled at 850 + retention 100 <= 1000");
    assert_eq!(p.unchanged, 3, "ann, dan, and new (disabled at 950, kept until 1050)");
    assert_eq!(p.writes().len(), 5);
    assert!(p.result.iter().any(|r| r.alias == "new") && !p.result.iter().any(|r| r.alias == "old"));
    // The next sync with the same source data changes nothing: disabled_at is not news.
    let again = plan(
        &p.result,
        vec![snap(
            "a",
            1,
            p.result
                .iter()
                .filter(|r| r.alias != "eve" && r.alias != "new")
                .map(|r| DirectoryRow { disabled_at: r.disabled_at.map(|_| 0), ..r.clone() })
                .collect(),
        )],
        &S,
    );
    assert!(again.is_empty(), "{}", again.render());
}

#[test]
fn an_unreachable_empty_or_shrunken_source_changes_nothing() {
    let cur: Vec<DirectoryRow> = (0..10).map(|i| person("a", &format!("u{i}"), "U")).collect();
    let other = snap("b", 2, vec![person("b", "zed", "Zed")]);
    let failed = Snapshot { fetch: Fetch::Failed("connection refused".into()), ..snap("a", 1, vec![]) };
    for (s, why) in [
        (failed, "unreachable: connection refused"),
        (snap("a", 1, vec![]), "returned nobody"),
        (snap("a", 1, cur[..4].to_vec()), "would remove 6 of its 10 people"),
    ] {
        let p = plan(&cur, vec![s, other.clone()], &S);
        assert_eq!(p.held.len(), 1, "{}", p.render());
        assert!(p.held[0].1.starts_with(why), "{}", p.held[0].1);
        assert!(p.disabled.is_empty() && p.purged.is_empty() && p.updated.is_empty());
        assert_eq!(aliases(&p.created), ["zed"], "other sources still sync");
        assert_eq!(p.result.len(), 11);
        assert!(p.marks.is_empty() || p.marks.iter().all(|(s, _)| s == "b"));
    }
    // Within the share: applied.
    let p = plan(&cur, vec![snap("a", 1, cur[..6].to_vec())], &S);
    assert!(p.held.is_empty());
    assert_eq!(p.disabled.len(), 4);
}

#[test]
fn incremental_touches_only_what_changed() {
    let cur: Vec<DirectoryRow> = (0..100_000).map(|i| person("a", &format!("u{i}"), "U")).collect();
    let mut present: HashSet<String> = cur.iter().map(|r| r.key.clone()).collect();
    present.remove("uid=u7,dc=a");
    let mut changed: Vec<DirectoryRow> =
        (0..9).map(|i| person("a", &format!("u{}", i * 1000 + 1), "Renamed")).collect();
    changed.push(person("a", "newbie", "New"));
    present.insert("uid=newbie,dc=a".into());
    let s = Snapshot {
        fetch: Fetch::Incremental { changed, present },
        mark: Some("20261203130000Z".into()),
        ..snap("a", 1, vec![])
    };
    let p = plan(&cur, vec![s], &S);
    assert_eq!((p.created.len(), p.updated.len(), p.disabled.len()), (1, 9, 1));
    assert_eq!(p.writes().len(), 11, "ten changes and one deletion, not 100,000 rows");
    assert_eq!(p.unchanged, 100_000 - 10);
    assert_eq!(p.marks, vec![("a".to_string(), "20261203130000Z".to_string())]);
}

#[test]
fn a_source_removed_from_the_config_keeps_its_people() {
    let cur = vec![person("gone", "ann", "Ann")];
    let p = plan(&cur, vec![snap("a", 1, vec![person("a", "bob", "Bob")])], &S);
    assert!(p.disabled.is_empty());
    assert!(p.held[0].1.contains("no longer configured"));
    assert_eq!(aliases(&p.result), ["ann", "bob"]);
}
