//! The layer on a real loopback server, driven by a real HTTP client, on the memory,
//! Redis and MySQL stores. Each case is a plain async fn in `cases`, stamped out once per
//! store so a failure names the rule and the store.

mod cases;
mod faults;
mod stores;
mod support;

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::cases::$case(crate::stores::memory().await).await;
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::cases::$case(crate::stores::redis().await).await;
            })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::cases::$case(crate::stores::mysql().await).await;
            })*
        }
    };
}

on_every_store!(
    a_repeat_is_replayed_byte_for_byte,
    the_same_key_on_another_request_is_422,
    principals_never_share_keys,
    a_global_scope_is_shared_and_routes_stay_apart,
    a_request_without_its_principal_is_refused,
    the_status_policy_decides_what_is_stored,
    the_status_policy_is_configurable,
    an_oversized_response_is_never_run_twice,
    an_oversized_response_can_be_refused,
    a_duplicate_gets_409_with_a_useful_retry_after,
    a_duplicate_can_wait_for_the_replay,
    sixty_four_identical_requests_run_the_handler_once,
    the_key_is_a_structured_field_string,
    bare_keys_are_accepted_only_when_allowed,
    missing_keys_and_other_methods,
    an_oversized_request_is_413,
    a_client_that_hangs_up_never_causes_a_second_run,
);

mod unit;
