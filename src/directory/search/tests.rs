use super::*;

pub(crate) fn row(alias: &str, first: &str, last: &str, account: &str) -> DirectoryRow {
    DirectoryRow {
        alias: alias.into(),
        source: "corp".into(),
        key: alias.into(),
        display_name: format!("{first} {last}"),
        first: first.into(),
        last: last.into(),
        account: account.into(),
        title: "Engineer".into(),
        phone: "+1 555 0100".into(),
        ..Default::default()
    }
}

fn people() -> Vec<DirectoryRow> {
    vec![
        row("ann.lee", "Ann", "Lee", "CORP\\alee"),
        row("bo.leeds", "Bo", "Leeds", "CORP\\bleeds"),
        row("zoe", "Zoë", "Ångström", "CORP\\zoe"),
        row("ann.smith", "Ann", "Smith", "CORP\\asmith"),
        DirectoryRow { disabled_at: Some(5), ..row("gone.lee", "Gone", "Lee", "x") },
    ]
}

fn aliases(hits: &[Hit]) -> Vec<&str> {
    let mut a: Vec<&str> = hits.iter().map(|h| h.alias.as_str()).collect();
    a.sort_unstable();
    a
}

#[test]
fn prefix_case_and_accent_insensitive() {
    let ix = Index::build(&people(), "example.com");
    let s = |q: &str| ix.search(&Query::parse(q).expect("query"));
    assert_eq!(aliases(&s("lee")), ["ann.lee", "bo.leeds"], "prefix; the disabled person is not found");
    assert_eq!(aliases(&s("LEE")), ["ann.lee", "bo.leeds"]);
    assert_eq!(aliases(&s("angstr")), ["zoe"]);
    assert_eq!(aliases(&s("zoe ÅNG")), ["zoe"]);
    assert_eq!(aliases(&s("first:ann last:lee")), ["ann.lee"]);
    assert_eq!(aliases(&s("first:lee")), Vec::<&str>::new());
    assert_eq!(aliases(&s("asmith")), ["ann.smith"], "account name after the domain");
    assert_eq!(aliases(&s("account:corp\\alee")), ["ann.lee"], "account name whole");
    let h = &s("first:ann last:lee")[0];
    assert_eq!(
        (h.uri.as_str(), h.display_name.as_str(), h.title.as_str()),
        ("sip:ann.lee@example.com", "Ann Lee", "Engineer")
    );
    assert!(matches!(Query::parse("   "), Err(SearchError::BadQuery(_))));
    assert!(matches!(Query::parse("office:3"), Err(SearchError::BadQuery(m)) if m.contains("unknown field")));
}

#[test]
fn at_most_twenty_rows() {
    let rows: Vec<DirectoryRow> = (0..100).map(|i| row(&format!("s{i}"), "Sam", "Smith", "")).collect();
    let ix = Index::build(&rows, "x");
    assert_eq!(ix.search(&Query::parse("smith").expect("q")).len(), ROWS_MAX);
}

#[test]
fn the_eighty_first_search_is_busy() {
    let l = Limiter::new(SEARCHES_MAX);
    let permits: Vec<Permit<'_>> = (0..SEARCHES_MAX).map(|_| l.try_enter().expect("under the cap")).collect();
    assert!(matches!(l.try_enter(), Err(SearchError::Busy)));
    drop(permits);
    assert!(l.try_enter().is_ok(), "permits end with their searches");
}

#[test]
fn fold_and_http() {
    assert_eq!(fold("Łukasz Straße ÇÉÑ"), "lukasz strasse cen");
    install(Arc::new(Index::build(&people(), "example.com")));
    let (status, _, body) = http_search(b"/directory/search?q=first%3Aann+last%3Alee");
    assert_eq!(status, "200 OK");
    assert!(body.contains("\"uri\":\"sip:ann.lee@example.com\"") && !body.contains("smith"), "{body}");
    assert_eq!(http_search(b"/directory/search").0, "400 Bad Request");
    assert_eq!(http_search(b"/directory/search?q=%ZZ").0, "400 Bad Request");
}
