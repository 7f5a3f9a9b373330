//! Specs for destination names: SRV expansion into weights and priorities, the TTL clamp, and the
//! book's clock (refresh, failures, grace, lost queries), each with an injected `now`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::config::DnsTarget;

fn name(host: &str) -> DnsTarget {
    DnsTarget { host: host.into(), port: None }
}

fn a(addr: &str) -> DnsAddr {
    DnsAddr { srv: None, addr: addr.parse::<SocketAddr>().unwrap() }
}

fn srv(priority: u16, weight: u16, addr: &str) -> DnsAddr {
    DnsAddr { srv: Some(SrvRank { priority, weight }), addr: addr.parse().unwrap() }
}

fn timers() -> DnsTimers {
    DnsTimers {
        min_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(300),
        grace: Duration::from_secs(60),
        lost_after: Duration::from_secs(20),
    }
}

fn answer(addrs: &[DnsAddr], ttl_s: u64) -> Result<Answer, String> {
    Ok(Answer::new(addrs.to_vec(), Duration::from_secs(ttl_s)))
}

/// A book with one name, asked at `t0` and answered with `addrs`.
fn resolved_book(t0: Instant, addrs: &[DnsAddr], ttl_s: u64) -> (DnsBook, DnsTarget) {
    let n = name("pool.example.net");
    let mut book = DnsBook::new(timers());
    book.sync(std::slice::from_ref(&n), timers(), t0);
    assert_eq!(book.due(t0), std::slice::from_ref(&n));
    assert!(book.on_result(&n, answer(addrs, ttl_s), t0));
    (book, n)
}

#[test]
fn srv_targets_of_the_lowest_priority_weigh_in_proportion_and_higher_priorities_are_backups() {
    let addrs = [srv(10, 60, "10.0.0.1:5060"), srv(10, 30, "10.0.0.2:5070"), srv(10, 0, "10.0.0.3:5060"), srv(20, 100, "10.0.0.9:5060")];
    let shares = weight_shares(&addrs);
    assert_eq!(shares, [(60, 60), (30, 60), (1, 60), (0, 1)]);
    let weights: Vec<u32> = shares.iter().map(|s| scaled_weight(100, *s)).collect();
    // The heaviest target weighs the row's weight; a weight-0 record keeps the least chance.
    assert_eq!(weights, [100, 50, 2, 0]);
    assert_eq!(scaled_weight(1, (1, 60)), 1, "a target both the row and its record give a chance keeps one");
    assert_eq!(scaled_weight(0, (60, 60)), 0, "a row of weight 0 stays 0");
    assert_eq!(scaled_weight(u32::MAX, (1, 1)), u32::MAX);
}

#[test]
fn every_a_record_weighs_the_rows_weight_and_all_zero_srv_weights_are_equal() {
    assert_eq!(weight_shares(&[a("10.0.0.1:5060"), a("10.0.0.2:5060")]), [(1, 1), (1, 1)]);
    assert_eq!(weight_shares(&[srv(0, 0, "10.0.0.1:5060"), srv(0, 0, "10.0.0.2:5060")]), [(1, 1), (1, 1)]);
}

#[test]
fn the_refresh_interval_is_the_ttl_clamped_to_min_and_max() {
    let t = timers();
    assert_eq!(t.clamp(Duration::ZERO), Duration::from_secs(5), "a TTL of 0 must not spin");
    assert_eq!(t.clamp(Duration::from_secs(42)), Duration::from_secs(42));
    assert_eq!(t.clamp(Duration::from_secs(86_400)), Duration::from_secs(300));
}

#[test]
fn a_name_is_asked_once_until_its_answer_and_again_at_its_clamped_ttl() {
    let t0 = Instant::now();
    let (mut book, n) = resolved_book(t0, &[a("10.0.0.1:5060")], 30);
    assert!(book.due(t0 + Duration::from_secs(29)).is_empty());
    assert_eq!(book.due(t0 + Duration::from_secs(30)), std::slice::from_ref(&n));
    assert!(book.due(t0 + Duration::from_secs(31)).is_empty(), "in flight: not asked twice");
    // The same addresses again: nothing to rebuild; a TTL of 1 s is refreshed at the floor.
    assert!(!book.on_result(&n, answer(&[a("10.0.0.1:5060")], 1), t0 + Duration::from_secs(31)));
    assert_eq!(book.get(&n).unwrap().refresh, Some(Duration::from_secs(5)));
    assert_eq!(book.due(t0 + Duration::from_secs(35)), []);
    assert_eq!(book.due(t0 + Duration::from_secs(36)), std::slice::from_ref(&n));
    assert_eq!(book.get(&n).unwrap().resolutions, 2);
}

#[test]
fn an_answer_that_changes_replaces_the_addresses_and_says_so() {
    let t0 = Instant::now();
    let (mut book, n) = resolved_book(t0, &[a("10.0.0.1:5060"), a("10.0.0.2:5060")], 30);
    let t1 = t0 + Duration::from_secs(30);
    book.due(t1);
    // Order in the answer does not matter; the set does.
    assert!(!book.on_result(&n, answer(&[a("10.0.0.2:5060"), a("10.0.0.1:5060")], 30), t1));
    let t2 = t1 + Duration::from_secs(30);
    book.due(t2);
    assert!(book.on_result(&n, answer(&[a("10.0.0.3:5060")], 30), t2));
    assert_eq!(book.resolved().get(&n).unwrap(), &[a("10.0.0.3:5060")]);
    assert_eq!(book.get(&n).unwrap().changes, 2);
}

#[test]
fn a_failing_name_keeps_its_last_addresses_for_the_grace_then_they_leave() {
    let t0 = Instant::now();
    let (mut book, n) = resolved_book(t0, &[a("10.0.0.1:5060")], 10);
    let t1 = t0 + Duration::from_secs(10);
    book.due(t1);
    assert!(!book.on_result(&n, Err("NXDOMAIN (no such name)".into()), t1), "within the grace nothing moves");
    let s = book.get(&n).unwrap();
    assert_eq!((s.failing_since, s.last_error.as_deref()), (Some(t1), Some("NXDOMAIN (no such name)")));
    assert_eq!(s.leaves_at(timers().grace), Some(t1 + Duration::from_secs(60)));
    assert_eq!(s.next_query, t1 + Duration::from_secs(5), "a failing name is asked again at the floor");
    // More failures do not restart the grace.
    let t2 = t1 + Duration::from_secs(5);
    book.due(t2);
    assert!(!book.on_result(&n, Err("SERVFAIL".into()), t2));
    assert_eq!(book.get(&n).unwrap().failing_since, Some(t1));
    assert!(book.tick(t1 + Duration::from_secs(59)).is_empty());
    assert_eq!(book.resolved().len(), 1);
    assert_eq!(book.tick(t1 + Duration::from_secs(60)), std::slice::from_ref(&n), "the grace ran out: the table must change");
    assert!(book.resolved().is_empty());
    let s = book.get(&n).unwrap();
    assert!(s.expired && s.addrs.is_empty());
    assert!(book.tick(t1 + Duration::from_secs(61)).is_empty(), "once gone, nothing more to change");
    // It comes back with its next answer.
    let t3 = t1 + Duration::from_secs(70);
    book.due(t3);
    assert!(book.on_result(&n, answer(&[a("10.0.0.1:5060")], 10), t3));
    let s = book.get(&n).unwrap();
    assert!(!s.expired && s.failing_since.is_none());
    assert_eq!(s.last_error.as_deref(), Some("SERVFAIL"), "the last error stays visible after a recovery");
}

#[test]
fn an_answer_without_addresses_is_a_failure_and_a_zero_grace_drops_at_once() {
    let t0 = Instant::now();
    let (mut book, n) = resolved_book(t0, &[a("10.0.0.1:5060")], 10);
    book.sync(std::slice::from_ref(&n), DnsTimers { grace: Duration::ZERO, ..timers() }, t0);
    let t1 = t0 + Duration::from_secs(10);
    book.due(t1);
    assert!(book.on_result(&n, answer(&[], 10), t1));
    assert!(book.resolved().is_empty());
    assert_eq!(book.get(&n).unwrap().last_error.as_deref(), Some("the answer holds no address"));
}

#[test]
fn a_name_that_never_resolved_has_no_addresses_and_shows_why() {
    let t0 = Instant::now();
    let n = name("typo.example.net");
    let mut book = DnsBook::new(timers());
    book.sync(std::slice::from_ref(&n), timers(), t0);
    book.due(t0);
    assert!(!book.on_result(&n, Err("NXDOMAIN (no such name)".into()), t0), "nothing was in the table");
    assert!(book.resolved().is_empty());
    let s = book.get(&n).unwrap();
    assert_eq!((s.failures, s.failing_since, s.leaves_at(timers().grace)), (1, Some(t0), None));
    assert!(book.tick(t0 + Duration::from_secs(3600)).is_empty());
}

#[test]
fn a_query_whose_result_never_comes_counts_as_a_failure() {
    let t0 = Instant::now();
    let (mut book, n) = resolved_book(t0, &[a("10.0.0.1:5060")], 10);
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(book.due(t1), std::slice::from_ref(&n));
    assert!(book.tick(t1 + Duration::from_secs(19)).is_empty());
    assert!(book.get(&n).unwrap().in_flight.is_some());
    assert!(book.tick(t1 + Duration::from_secs(20)).is_empty(), "within the grace the address stays");
    let s = book.get(&n).unwrap();
    assert_eq!((s.in_flight, s.failures, s.last_error.as_deref()), (None, 1, Some("no result from the resolver")));
    assert_eq!(book.resolved().len(), 1, "the grace applies as to any failure");
}

#[test]
fn a_reload_keeps_the_names_that_stay_forgets_the_others_and_asks_new_ones_now() {
    let t0 = Instant::now();
    let (mut book, n) = resolved_book(t0, &[a("10.0.0.1:5060")], 30);
    let other = DnsTarget { host: "fs2.example.net".into(), port: Some(5080) };
    let t1 = t0 + Duration::from_secs(1);
    assert!(book.sync(&[n.clone(), other.clone()], timers(), t1));
    assert_eq!(book.due(t1), std::slice::from_ref(&other), "the kept name keeps its clock");
    assert_eq!(book.get(&n).unwrap().resolutions, 1);
    assert!(book.sync(std::slice::from_ref(&other), timers(), t1));
    assert!(book.get(&n).is_none() && book.resolved().is_empty());
    // A new resolver: what was in flight is asked again.
    book.requeue(t1);
    assert_eq!(book.due(t1), [other]);
}
