"""The vendors' own SDKs (dynamixel_sdk, scservo_sdk) against the emulator: it speaks the real
protocol, not just our reading of it."""

from __future__ import annotations

import pytest

from drivers.tables import MODELS

from .support import wait_until

dxl = pytest.importorskip("dynamixel_sdk")
scs = pytest.importorskip("scservo_sdk")

BAUD = 1_000_000


@pytest.fixture
def sdk_port():
    """``sdk_port(sdk, virtual_bus)``: the SDK's PortHandler, open at 1 Mbaud; closed after."""
    handlers = []

    def make(sdk, virtual):
        handler = sdk.PortHandler(virtual.port)
        assert handler.openPort()
        assert handler.setBaudRate(BAUD)
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.closePort()


# --- Feetech (scservo_sdk, protocol 0 = STS) ----------------------------------------------------


def test_feetech_sdk_ping_read_write(make_virtual_bus, sdk_port):
    virtual = make_virtual_bus("feetech", {1: "sts3215", 2: "sts3215"})
    port, packets = sdk_port(scs, virtual), scs.PacketHandler(0)

    model_number, result, error = packets.ping(port, 1)
    assert (model_number, result, error) == (777, scs.COMM_SUCCESS, 0)
    _, result, _ = packets.ping(port, 9)
    assert result == scs.COMM_RX_TIMEOUT  # nobody at id 9

    assert packets.read2ByteTxRx(port, 2, 56) == (2048, scs.COMM_SUCCESS, 0)
    assert packets.write1ByteTxRx(port, 1, 40, 1) == (scs.COMM_SUCCESS, 0)
    assert virtual.servo(1).torque and not virtual.servo(2).torque
    assert packets.write2ByteTxRx(port, 1, 42, 2500) == (scs.COMM_SUCCESS, 0)
    moved = wait_until(lambda: packets.read2ByteTxRx(port, 1, 56)[0] == 2500)
    assert moved, "the torqued servo walks to its goal"


def test_feetech_sdk_sync_write_and_sync_read(make_virtual_bus, sdk_port):
    ids = [1, 2, 3]
    virtual = make_virtual_bus("feetech", dict.fromkeys(ids, "sts3215"))
    port, packets = sdk_port(scs, virtual), scs.PacketHandler(0)
    goal = MODELS["sts3215"].register("Goal_Position")

    writer = scs.GroupSyncWrite(port, packets, goal.address, goal.size)
    for i in ids:
        assert writer.addParam(i, [scs.SCS_LOBYTE(1000 + i), scs.SCS_HIBYTE(1000 + i)])
    assert writer.txPacket() == scs.COMM_SUCCESS
    goals = lambda: [virtual.servo(i).get("Goal_Position") for i in ids]
    assert wait_until(lambda: goals() == [1001, 1002, 1003]), goals()  # no reply to wait for

    reader = scs.GroupSyncRead(port, packets, goal.address, goal.size)
    for i in ids:
        assert reader.addParam(i)
    assert reader.txRxPacket() == scs.COMM_SUCCESS
    assert [reader.getData(i, goal.address, goal.size) for i in ids] == [1001, 1002, 1003]


# --- Dynamixel (dynamixel_sdk, protocol 2.0) ----------------------------------------------------


def test_dynamixel_sdk_ping_read_write_and_access_error(make_virtual_bus, sdk_port):
    virtual = make_virtual_bus("dynamixel", {1: "xl430-w250", 2: "xl330-m288"})
    port, packets = sdk_port(dxl, virtual), dxl.PacketHandler(2.0)

    assert packets.ping(port, 1) == (1060, dxl.COMM_SUCCESS, 0)
    assert packets.ping(port, 2) == (1200, dxl.COMM_SUCCESS, 0)
    assert packets.read4ByteTxRx(port, 2, 132) == (2048, dxl.COMM_SUCCESS, 0)

    assert packets.write1ByteTxRx(port, 1, 64, 1) == (dxl.COMM_SUCCESS, 0)
    assert virtual.servo(1).torque
    # EEPROM (Homing_Offset, address 20) is locked while torque is on: error 7, access error
    result, error = packets.write4ByteTxRx(port, 1, 20, 5)
    assert (result, error) == (dxl.COMM_SUCCESS, 7)
    assert virtual.servo(1).get("Homing_Offset") == 0
    assert packets.write4ByteTxRx(port, 2, 20, -5) == (dxl.COMM_SUCCESS, 0)  # torque off: fine
    assert virtual.servo(2).get("Homing_Offset") == -5


def test_dynamixel_sdk_sees_a_new_id_answer_at_once(make_virtual_bus, sdk_port):
    # The SDK waits for a status from the id it addressed, so the reply to an ID write must
    # carry the old id, and the servo must answer to the new one afterwards.
    virtual = make_virtual_bus("dynamixel", {1: "xl330-m288"})
    port, packets = sdk_port(dxl, virtual), dxl.PacketHandler(2.0)
    assert packets.write1ByteTxRx(port, 1, 7, 9) == (dxl.COMM_SUCCESS, 0)
    assert packets.ping(port, 9) == (1200, dxl.COMM_SUCCESS, 0)
    assert packets.ping(port, 1)[1] == dxl.COMM_RX_TIMEOUT


def test_dynamixel_sdk_broadcast_ping(make_virtual_bus, sdk_port):
    virtual = make_virtual_bus("dynamixel", {3: "xl330-m288", 1: "xl430-w250", 7: "xl330-m077"})
    port, packets = sdk_port(dxl, virtual), dxl.PacketHandler(2.0)
    found, result = packets.broadcastPing(port)
    assert result == dxl.COMM_SUCCESS
    assert {i: model for i, (model, _firmware) in found.items()} == {1: 1060, 3: 1200, 7: 1190}


def test_dynamixel_sdk_sync_write_sync_read_and_fast_sync_read(make_virtual_bus, sdk_port):
    ids = [1, 2, 3]
    virtual = make_virtual_bus("dynamixel", dict.fromkeys(ids, "xl330-m288"))
    port, packets = sdk_port(dxl, virtual), dxl.PacketHandler(2.0)
    goal = MODELS["xl330-m288"].register("Goal_Position")

    writer = dxl.GroupSyncWrite(port, packets, goal.address, goal.size)
    for i in ids:
        assert writer.addParam(i, (1000 * i).to_bytes(4, "little"))
    assert writer.txPacket() == dxl.COMM_SUCCESS
    goals = lambda: [virtual.servo(i).get("Goal_Position") for i in ids]
    assert wait_until(lambda: goals() == [1000, 2000, 3000]), goals()  # no reply to wait for

    reader = dxl.GroupSyncRead(port, packets, goal.address, goal.size)
    for i in ids:
        assert reader.addParam(i)
    assert reader.txRxPacket() == dxl.COMM_SUCCESS
    assert [reader.getData(i, goal.address, goal.size) for i in ids] == [1000, 2000, 3000]

    for i in ids:
        virtual.servo(i).set("Goal_Position", 10 * i)
    assert reader.fastSyncRead() == dxl.COMM_SUCCESS
    assert [reader.getData(i, goal.address, goal.size) for i in ids] == [10, 20, 30]


def test_dynamixel_sdk_bulk_read_and_bulk_write_across_models(make_virtual_bus, sdk_port):
    # The Koch follower's mix: BULK_READ/BULK_WRITE name a register per servo.
    virtual = make_virtual_bus("dynamixel", {1: "xl430-w250", 2: "xl330-m288", 3: "xl330-m288"})
    port, packets = sdk_port(dxl, virtual), dxl.PacketHandler(2.0)
    xl = MODELS["xl330-m288"]
    goal, led, present = (xl.register(n) for n in ("Goal_Position", "LED", "Present_Position"))
    virtual.servo(3).actual = 1234.0

    writer = dxl.GroupBulkWrite(port, packets)
    assert writer.addParam(1, goal.address, goal.size, list((3000).to_bytes(4, "little")))
    assert writer.addParam(2, led.address, led.size, [1])
    assert writer.txPacket() == dxl.COMM_SUCCESS
    assert wait_until(lambda: virtual.servo(1).get("Goal_Position") == 3000)
    assert wait_until(lambda: virtual.servo(2).get("LED") == 1)
    assert virtual.servo(2).get("Goal_Position") == 0, "each servo gets only its own entry"

    reader = dxl.GroupBulkRead(port, packets)
    assert reader.addParam(1, goal.address, goal.size)
    assert reader.addParam(2, 0, 2)  # Model_Number
    assert reader.addParam(3, present.address, present.size)
    assert reader.txRxPacket() == dxl.COMM_SUCCESS
    assert reader.getData(1, goal.address, goal.size) == 3000
    assert reader.getData(2, 0, 2) == 1200
    assert reader.getData(3, present.address, present.size) == 1234

    assert reader.fastBulkRead() == dxl.COMM_SUCCESS  # FAST_BULK_READ: one packet of blocks
    assert reader.getData(1, goal.address, goal.size) == 3000
    assert reader.getData(3, present.address, present.size) == 1234


def test_dynamixel_sdk_gets_an_instruction_error_for_an_unknown_instruction(
    make_virtual_bus, sdk_port
):
    virtual = make_virtual_bus("dynamixel", {1: "xl330-m288"})
    port, packets = sdk_port(dxl, virtual), dxl.PacketHandler(2.0)
    request = [0xFF, 0xFF, 0xFD, 0x00, 1, 3, 0, 0x7F, 0, 0]  # instruction 0x7F, no parameters
    _, result, error = packets.txRxPacket(port, request)
    assert (result, error) == (dxl.COMM_SUCCESS, 2)  # error number 2: instruction error


def test_feetech_sdk_gets_an_instruction_error_for_an_unknown_instruction(
    make_virtual_bus, sdk_port
):
    virtual = make_virtual_bus("feetech", {1: "sts3215"})
    port, packets = sdk_port(scs, virtual), scs.PacketHandler(0)
    request = [0xFF, 0xFF, 1, 2, 0x7F, 0]  # instruction 0x7F, no parameters
    _, result, error = packets.txRxPacket(port, request)
    assert (result, error) == (scs.COMM_SUCCESS, 0x40)  # the SCS instruction-error bit
