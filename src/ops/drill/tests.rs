use super::*;

fn load(text: &str) -> Result<Drill, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.toml");
    std::fs::write(&path, text).unwrap();
    Drill::load(&path).map_err(|e| {
        let msg = e.to_string();
        let prefix = format!("drill {}", path.display());
        assert!(msg.starts_with(&prefix), "{msg}");
        msg[prefix.len()..].to_owned()
    })
}

#[test]
fn checks_parse_into_their_kinds() {
    let d = load(
        "name = \"q\"\nsnapshot = \"oldest\"\n\n[[check]]\nsource = \"postgres/a\"\nsql = \"select 1\"\nmin = 1\nmax = 3\n\n\
         [[check]]\nsource = \"postgres/a\"\nsql = \"select 'x'\"\nequals = \"x\"\n\n\
         [[check]]\nsource = \"redis\"\nmin_keys = 5\n\n\
         [[check]]\nsource = \"files/acme\"\nmax_expired = 0\n\n\
         [[check]]\nsource = \"directories/vw\"\nmin_files = 3\n",
    )
    .unwrap();
    assert_eq!(d.snapshot, Which::Oldest);
    assert_eq!(
        d.checks[0],
        DrillCheck::Sql {
            source: "postgres/a".into(),
            sql: "select 1".into(),
            expect: SqlExpect::Within(Bound::Between(1.0, 3.0)),
        }
    );
    assert_eq!(d.checks[0].describe(), "sql `select 1` in [1, 3]");
    assert_eq!(d.checks[1].describe(), "sql `select 'x'` = x");
    assert_eq!(
        d.checks[2],
        DrillCheck::MinKeys {
            source: "redis".into(),
            min: 5
        }
    );
    assert_eq!(d.checks[2].describe(), "at least 5 keys");
    assert_eq!(
        d.checks[3].describe(),
        "certificates (min -, max expired 0)"
    );
    assert_eq!(
        d.checks[4],
        DrillCheck::MinFiles {
            source: "directories/vw".into(),
            min: 3
        }
    );
    assert_eq!(d.checks[4].describe(), "at least 3 files");
    assert_eq!(
        load("name = \"q\"\n[[check]]\nsource = \"redis\"\nmin_files = 1\n").unwrap_err(),
        ": check[0]: min_files applies to directories/<name> sources, not redis"
    );
    assert_eq!(load("name = \"q\"\n").unwrap().snapshot, Which::Latest);
}

#[test]
fn bad_combinations_name_the_check() {
    assert_eq!(
        load("name = \"q\"\n[[check]]\nsource = \"redis\"\n").unwrap_err(),
        ": check[0] (redis): give exactly one of sql, min_keys, min_files, or min_certificates/max_expired"
    );
    assert_eq!(
        load("name = \"q\"\n[[check]]\nsource = \"redis\"\nmin_keys = 1\nmin_certificates = 1\n")
            .unwrap_err(),
        ": check[0] (redis): give exactly one of sql, min_keys, min_files, or min_certificates/max_expired"
    );
    assert_eq!(
        load("name = \"q\"\n[[check]]\nsource = \"redis\"\nmin_keys = 1\n[[check]]\nsource = \"postgres/a\"\nsql = \"select 1\"\n")
            .unwrap_err(),
        ": check[1] (postgres/a): an sql check needs min, max or equals"
    );
    assert_eq!(
        load("name = \"q\"\n[[check]]\nsource = \"redis\"\nsql = \"select 1\"\nmin = 1\n")
            .unwrap_err(),
        ": check[0]: sql checks apply to postgres/<db> sources, not redis"
    );
    assert_eq!(
        load("name = \"a b\"\n").unwrap_err(),
        ": name `a b`: use letters, digits, '-', '_' or '.'"
    );
    assert!(
        load("name = \"q\"\nbogus = 1\n")
            .unwrap_err()
            .starts_with(" line 2: unknown field `bogus`"),
    );
}

#[test]
fn a_stack_drill_names_its_apps_and_their_timeout() {
    let d = load(
        "name = \"quarterly-stack\"\nscope = \"stack\"\napps = [\"link_app\", \"umami_app\"]\napp_timeout = \"90s\"\n",
    )
    .unwrap();
    assert_eq!(d.scope, Scope::Stack);
    assert_eq!(d.apps, ["link_app", "umami_app"]);
    assert_eq!(d.app_timeout, std::time::Duration::from_secs(90));
    let d = load("name = \"s\"\nscope = \"stack\"\n").unwrap();
    assert_eq!(d.app_timeout, DEFAULT_APP_TIMEOUT);
    assert_eq!(load("name = \"q\"\n").unwrap().scope, Scope::Sources);
}

#[test]
fn stack_keys_out_of_place_are_refused_by_name() {
    let e = load("name = \"s\"\nscope = \"everything\"\n").unwrap_err();
    assert!(e.contains("scope `everything`"), "{e}");
    let e = load("name = \"s\"\napps = [\"link_app\"]\n").unwrap_err();
    assert!(e.contains("apps") && e.contains("scope = \"stack\""), "{e}");
    let e = load("name = \"s\"\nscope = \"stack\"\napp_timeout = \"soon\"\n").unwrap_err();
    assert!(e.contains("app_timeout `soon`"), "{e}");
    let e =
        load("name = \"s\"\nscope = \"stack\"\n\n[[check]]\nsource = \"redis\"\nmin_keys = 1\n")
            .unwrap_err();
    assert!(e.contains("[[check]]"), "{e}");
}

#[test]
fn an_app_http_check_names_a_listed_app_and_a_plain_http_url() {
    let d = load(
        "name = \"s\"\nscope = \"stack\"\napps = [\"link_app\"]\n\n[[app]]\nname = \"link_app\"\nhttp = \"http://link:3000/api/health\"\n",
    )
    .unwrap();
    assert_eq!(d.app_http[0].0, "link_app");
    assert_eq!(d.app_http[0].1.as_str(), "http://link:3000/api/health");
    let e = load(
        "name = \"s\"\nscope = \"stack\"\napps = [\"link_app\"]\n\n[[app]]\nname = \"umami_app\"\nhttp = \"http://umami:3000/\"\n",
    )
    .unwrap_err();
    assert!(e.contains("app[0].name `umami_app`: not in apps"), "{e}");
    let e = load(
        "name = \"s\"\nscope = \"stack\"\napps = [\"link_app\"]\n\n[[app]]\nname = \"link_app\"\nhttp = \"https://link/\"\n",
    )
    .unwrap_err();
    assert!(e.contains("app[0].http `https://link/`"), "{e}");
}

#[test]
fn a_stack_drills_scratch_dir_is_absolute() {
    let d =
        load("name = \"s\"\nscope = \"stack\"\nscratch_dir = \"/var/lib/kdr-scratch\"\n").unwrap();
    assert_eq!(
        d.scratch_dir.as_deref(),
        Some(Path::new("/var/lib/kdr-scratch"))
    );
    let e = load("name = \"s\"\nscope = \"stack\"\nscratch_dir = \"scratch\"\n").unwrap_err();
    assert!(
        e.contains("scratch_dir `scratch`: write an absolute path"),
        "{e}"
    );
}
