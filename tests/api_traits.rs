//! The public types have the traits a user expects of them (checked at compile time):
//! handles and events cross threads, errors work with `?` and `Box<dyn Error + Send +
//! Sync>`, values compare and print.

use nwebsocket::{
    Binary, Builder, CloseEvent, Error, Event, EventBatches, Events, HandshakeResponse, Message,
    ReadyState, Reconnect, Text, WebSocket, WebSocketRef,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}
fn clone_debug<T: Clone + std::fmt::Debug>() {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}
fn eq<T: PartialEq + std::fmt::Debug>() {}

#[test]
fn public_types_have_the_expected_traits() {
    send_sync::<WebSocket<()>>();
    send_sync::<WebSocketRef>();
    // `Send`, not `Sync`: each clone takes bursts into a buffer of its own.
    send::<Events>();
    send::<EventBatches>();
    send_sync::<Event>();
    send_sync::<Message>();
    send_sync::<Error>();
    send_sync::<Builder>();
    send_sync::<HandshakeResponse>();
    clone_debug::<WebSocket<()>>();
    clone_debug::<WebSocketRef>();
    clone_debug::<Events>();
    clone_debug::<Event>();
    clone_debug::<Message>();
    clone_debug::<Text>();
    clone_debug::<Binary>();
    clone_debug::<Error>();
    clone_debug::<CloseEvent>();
    clone_debug::<Builder>();
    clone_debug::<Reconnect>();
    error::<Error>();
    eq::<Message>();
    eq::<Text>();
    eq::<Binary>();
    eq::<CloseEvent>();
    eq::<ReadyState>();
    let _: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::Aborted);
    let _: Message = "text".into();
    let _: Message = String::from("text").into();
    let _: Message = vec![1u8, 2, 3].into();
    let _: Message = (&[1u8, 2, 3][..]).into();
}

/// An event is copied at each hand-over and each take: it stays as small as a message and
/// its tag. (An `Error` with a response, or a JSON reply, inline made it 80 bytes; boxed,
/// 56: stream_small 3 rounds of 3, release, one core pull 0.92 -> 1.01x raw tungstenite,
/// callback 1.01 -> 1.07x, batches 1.09 -> 1.15x.)
#[test]
fn an_event_is_no_larger_than_a_message_and_a_tag() {
    assert!(
        std::mem::size_of::<Event>() <= 56,
        "{} bytes",
        std::mem::size_of::<Event>()
    );
    assert!(std::mem::size_of::<Error>() <= 56);
}
