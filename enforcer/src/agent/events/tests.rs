//! Unit tests of the event decoding and reporting (`events.rs`).

use enforcer_common::event::Header;

use super::*;

fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: T is Pod: every byte is initialised (explicit padding).
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, size_of::<T>()) }.to_vec()
}

#[test]
fn records_are_told_apart_by_their_kind() {
    let tls = TlsEvent {
        header: Header::new(event::kind::TLS, 7),
        lib_id: 3,
        ..TlsEvent::default()
    };
    match decode(&bytes_of(&tls)) {
        Ok(Record::Tls(e)) => assert_eq!((e.header.ts_ns, e.lib_id), (7, 3)),
        other => panic!("{other:?}"),
    }
    let hello = HelloEvent {
        header: Header::new(event::kind::HELLO, 9),
        flow: FlowKey::default(),
        lib_id: event::UNATTRIBUTED,
        verdict: verdict::BLOCKED,
        sni: event::sni::ABSENT,
        name_len: 0,
        name: [0; 256],
        hello: event::hello::CLIENT,
        evidence: 0,
        _pad: [0; 2],
        producer_pid: 0,
        producer_comm: [0; 16],
        flow_since_ns: 0,
    };
    // A ring record may be longer than the struct (the kernel rounds sizes up).
    let mut padded = bytes_of(&hello);
    padded.extend([0; 8]);
    match decode(&padded) {
        Ok(Record::Hello(e)) => assert_eq!(e.lib_id, event::UNATTRIBUTED),
        other => panic!("{other:?}"),
    }
}

#[test]
fn short_and_unknown_records_are_skipped() {
    let hello_sized = vec![0u8; size_of::<HelloEvent>()];
    assert_eq!(
        decode(&hello_sized).unwrap_err(),
        Skipped::UnknownKind(0),
        "a zeroed record is no event, whatever its size"
    );
    let mut unknown = bytes_of(&TlsEvent::default());
    unknown[0] = 200;
    assert_eq!(decode(&unknown).unwrap_err(), Skipped::UnknownKind(200));
    // A HelloEvent header on a TlsEvent-sized record is not read past its end.
    let mut short = bytes_of(&TlsEvent::default());
    short[0] = event::kind::HELLO;
    assert_eq!(
        decode(&short).unwrap_err(),
        Skipped::Short {
            kind: event::kind::HELLO,
            len: size_of::<TlsEvent>()
        }
    );
    assert_eq!(
        decode(&[event::kind::TLS]).unwrap_err(),
        Skipped::Short {
            kind: event::kind::TLS,
            len: 1
        }
    );
    assert!(decode(&[]).is_err());
}
