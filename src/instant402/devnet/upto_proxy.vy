# pragma version 0.4.3
# @title Devnet x402 upto Permit2 proxy
# @notice The public interface and behaviour of x402's upto Permit2 proxy, written for the local devnet and installed
#         at its canonical address. It is the `spender` a buyer names in a Permit2 witness transfer: the witness binds
#         the payee (`to`), the only caller allowed to settle (`facilitator`) and `validAfter`; the upper time bound is
#         Permit2's deadline. The caller picks the amount, up to the signed maximum. `settleWithPermit` first tries the
#         token's EIP-2612 `permit` for Permit2 (a failure is logged, not fatal: an allowance may already exist).
#         Permit2's address is a constant (the real proxy takes the same canonical address as a constructor argument),
#         so the runtime code can be installed at genesis without running a constructor.

struct TokenPermissions:
    token: address
    amount: uint256

struct PermitTransferFrom:
    permitted: TokenPermissions
    nonce: uint256
    deadline: uint256

struct SignatureTransferDetails:
    to: address
    requestedAmount: uint256

struct Witness:
    to: address
    facilitator: address
    validAfter: uint256

struct EIP2612Permit:
    value: uint256
    deadline: uint256
    r: bytes32
    s: bytes32
    v: uint8

SIGNATURE_MAX: constant(uint256) = 1024
WITNESS_TYPE_MAX: constant(uint256) = 1024
REVERT_DATA_MAX: constant(uint256) = 356
REASON_MAX: constant(uint256) = 256

interface Permit2:
    def permitWitnessTransferFrom(
        permit: PermitTransferFrom,
        transferDetails: SignatureTransferDetails,
        owner: address,
        witness: bytes32,
        witnessTypeString: String[WITNESS_TYPE_MAX],
        signature: Bytes[SIGNATURE_MAX],
    ): nonpayable

event Settled:
    pass

event SettledWithPermit:
    pass

event EIP2612PermitFailedWithReason:
    token: indexed(address)
    owner: indexed(address)
    reason: String[REASON_MAX]

event EIP2612PermitFailedWithPanic:
    token: indexed(address)
    owner: indexed(address)
    errorCode: uint256

event EIP2612PermitFailedWithData:
    token: indexed(address)
    owner: indexed(address)
    data: Bytes[REVERT_DATA_MAX]

PERMIT2: public(constant(address)) = 0x000000000022D473030F116dDEE9F6B43aC78BA3
WITNESS_TYPE_STRING: public(constant(String[WITNESS_TYPE_MAX])) = (
    "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)"
)
WITNESS_TYPEHASH: public(constant(bytes32)) = keccak256("Witness(address to,address facilitator,uint256 validAfter)")
ERROR_STRING: constant(bytes4) = method_id("Error(string)", output_type=bytes4)
PANIC: constant(bytes4) = method_id("Panic(uint256)", output_type=bytes4)


@external
@nonreentrant
def settle(
    permit: PermitTransferFrom,
    amount: uint256,
    owner: address,
    witness: Witness,
    signature: Bytes[SIGNATURE_MAX],
):
    if amount > permit.permitted.amount:
        raw_revert(method_id("AmountExceedsPermitted()"))
    self._settle(permit, amount, owner, witness, signature)
    log Settled()


@external
@nonreentrant
def settleWithPermit(
    permit2612: EIP2612Permit,
    permit: PermitTransferFrom,
    amount: uint256,
    owner: address,
    witness: Witness,
    signature: Bytes[SIGNATURE_MAX],
):
    if amount > permit.permitted.amount:
        raw_revert(method_id("AmountExceedsPermitted()"))
    self._execute_permit(permit.permitted.token, owner, permit2612, permit.permitted.amount)
    self._settle(permit, amount, owner, witness, signature)
    log SettledWithPermit()


@internal
def _settle(
    permit: PermitTransferFrom,
    amount: uint256,
    owner: address,
    witness: Witness,
    signature: Bytes[SIGNATURE_MAX],
):
    if amount == 0:
        raw_revert(method_id("InvalidAmount()"))  # a zero transfer would only burn the buyer's nonce
    if owner == empty(address):
        raw_revert(method_id("InvalidOwner()"))
    if witness.to == empty(address):
        raw_revert(method_id("InvalidDestination()"))
    if msg.sender != witness.facilitator:
        raw_revert(method_id("UnauthorizedFacilitator()"))
    if block.timestamp < witness.validAfter:
        raw_revert(method_id("PaymentTooEarly()"))
    # The witness is hashed here from its fields, so Permit2's signature check covers payee and facilitator.
    witness_hash: bytes32 = keccak256(abi_encode(WITNESS_TYPEHASH, witness.to, witness.facilitator, witness.validAfter))
    extcall Permit2(PERMIT2).permitWitnessTransferFrom(
        permit,
        SignatureTransferDetails(to=witness.to, requestedAmount=amount),
        owner,
        witness_hash,
        WITNESS_TYPE_STRING,
        signature,
    )


@internal
def _execute_permit(token: address, owner: address, permit2612: EIP2612Permit, permitted_amount: uint256):
    if permit2612.value != permitted_amount:
        raw_revert(method_id("Permit2612AmountMismatch()"))
    ok: bool = False
    data: Bytes[REVERT_DATA_MAX] = b""
    ok, data = raw_call(
        token,
        abi_encode(
            owner,
            PERMIT2,
            permit2612.value,
            permit2612.deadline,
            permit2612.v,
            permit2612.r,
            permit2612.s,
            method_id=method_id("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"),
        ),
        max_outsize=REVERT_DATA_MAX,
        revert_on_failure=False,
    )
    if ok:
        return
    selector: bytes4 = empty(bytes4)
    if len(data) >= 4:
        selector = convert(slice(data, 0, 4), bytes4)
    if selector == ERROR_STRING and len(data) >= 68:
        size: uint256 = convert(slice(data, 36, 32), uint256)
        if size <= REASON_MAX and len(data) >= 68 + size:
            log EIP2612PermitFailedWithReason(token=token, owner=owner, reason=convert(slice(data, 68, size), String[REASON_MAX]))
            return
    if selector == PANIC and len(data) == 36:
        log EIP2612PermitFailedWithPanic(token=token, owner=owner, errorCode=convert(slice(data, 4, 32), uint256))
        return
    log EIP2612PermitFailedWithData(token=token, owner=owner, data=data)
